"""The pipeline's outputs round-trip through a real S3 remote: moto's S3 server on 127.0.0.1."""

import hashlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_dvc import BIN, fresh_clone, run  # noqa: F401  (fresh_clone is a fixture)

pytestmark = pytest.mark.slow

BUCKET = "charlie-dvc"
# Dummy credentials: moto accepts any. They live only in the environment of this process and
# of the `dvc` subprocesses, never in a config file (the test checks .dvc/config).
ACCESS_KEY = "AKIATESTDUMMYKEY0000"
SECRET_KEY = "dummy-secret-key-never-written-to-config"
DATASET_OUTS = ("data/jsonl/records.jsonl", "data/hf_datasets/sft_dataset")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def s3_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server on a free local port, stopped by its PID whatever the test does."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    # Nothing from the user's ~/.aws may leak in.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config-absent"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials-absent"))

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = (tmp_path / "moto_server.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (
                f"moto_server exited: {(tmp_path / 'moto_server.log').read_text()}"
            )
            try:
                with urllib.request.urlopen(endpoint, timeout=1):
                    break
            except urllib.error.HTTPError:
                break  # it answered
            except OSError:
                assert time.monotonic() < deadline, "moto_server did not answer within 30 s"
                time.sleep(0.1)
        yield endpoint
    finally:
        stop(proc)
        log.close()
    assert proc.returncode is not None


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


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
