"""The pipeline's outputs round-trip through a real S3 remote: moto's S3 server on 127.0.0.1."""

import hashlib
import shutil
from pathlib import Path

import pytest

from .s3_server import ACCESS_KEY, SECRET_KEY, s3_client
from .test_dvc import fresh_clone, run  # noqa: F401  (fresh_clone is a fixture)

pytestmark = pytest.mark.slow

BUCKET = "charlie-dvc"
DATASET_OUTS = ("data/jsonl/records.jsonl", "data/hf_datasets/sft_dataset")


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under the dataset's outputs, by path relative to the clone."""
    digests = {}
    for rel in DATASET_OUTS:
        path = root / rel
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digests[str(file.relative_to(root))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests


def test_outputs_round_trip_through_an_s3_remote(fresh_clone, s3_endpoint):  # noqa: F811
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)

    run(["dvc", "repro", "dataset"], fresh_clone)
    before = tree_digest(fresh_clone)
    assert "data/jsonl/records.jsonl" in before
    assert "data/hf_datasets/sft_dataset/dataset_dict.json" in before

    run(["dvc", "remote", "add", "-d", "s3", f"s3://{BUCKET}/charlie"], fresh_clone)
    run(["dvc", "remote", "modify", "s3", "endpointurl", s3_endpoint], fresh_clone)
    config = (fresh_clone / ".dvc" / "config").read_text()
    assert s3_endpoint in config and f"s3://{BUCKET}/charlie" in config
    for secret in (ACCESS_KEY, SECRET_KEY, "access_key", "secret_access_key"):
        assert secret not in config, f".dvc/config holds a credential: {secret}"
    assert not (fresh_clone / ".dvc" / "config.local").exists()

    run(["dvc", "push", "--with-deps", "dataset", "-r", "s3"], fresh_clone)
    keys = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for obj in page.get("Contents", [])
    ]
    assert keys and all(key.startswith("charlie/") for key in keys)
    assert len(keys) >= len(before)  # every file of the outputs, plus the .dir manifests

    shutil.rmtree(fresh_clone / ".dvc" / "cache")
    (fresh_clone / "data/jsonl/records.jsonl").unlink()
    shutil.rmtree(fresh_clone / "data/hf_datasets/sft_dataset")
    assert not any((fresh_clone / rel).exists() for rel in DATASET_OUTS)

    run(["dvc", "pull", "--with-deps", "dataset", "-r", "s3"], fresh_clone)
    assert tree_digest(fresh_clone) == before
    assert "up to date" in run(["dvc", "status", "dataset"], fresh_clone)
