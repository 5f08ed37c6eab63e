"""`dvc repro` on a fresh copy of the repository, as `make demo` runs it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    """The files a commit of the working tree would hold, in a new git repository."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    clone = tmp_path / "clone"
    for rel in filter(None, listed):
        if (REPO / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, clone / rel)
    run(["git", "init", "-q"], clone)
    for generated in ("data/jsonl/records.jsonl", "data/jsonl/rejects.jsonl"):
        assert not (clone / generated).exists()
    return clone


def test_repro_on_a_fresh_clone_then_a_second_repro_does_nothing(fresh_clone):
    committed = {
        p: (fresh_clone / p).read_text()
        for p in ("dvc.lock", "data/jsonl/parse_report.json", "data/hf_datasets/dataset_card.json")
    }
    output = run(["dvc", "repro"], fresh_clone)
    for path, text in committed.items():
        # the committed lock and metrics are what the committed code produces, so that
        # `dvc metrics diff` and `dvc status` mean something; `make demo` refreshes them
        assert (fresh_clone / path).read_text() == text, (
            f"{path} is stale: run `make demo`, commit it"
        )
    assert "Running stage 'parse'" in output and "Running stage 'dataset'" in output
    assert (fresh_clone / "data/hf_datasets/sft_dataset/dataset_dict.json").is_file()
    report = json.loads((fresh_clone / "data/jsonl/parse_report.json").read_text())
    assert report["balanced"] is True and report["totals"]["records"] > 2000
    lines = (fresh_clone / "data/jsonl/records.jsonl").read_text().splitlines()
    assert len(lines) == report["totals"]["records"]

    again = run(["dvc", "repro"], fresh_clone)
    assert "Running stage" not in again
    assert "up to date" in run(["dvc", "status"], fresh_clone)
    assert "totals.records" in run(["dvc", "metrics", "show"], fresh_clone)


def test_outputs_round_trip_through_the_default_offline_remote(fresh_clone):
    run(["dvc", "repro"], fresh_clone)
    records = fresh_clone / "data/jsonl/records.jsonl"
    original = records.read_bytes()
    run(["dvc", "push"], fresh_clone)
    assert (fresh_clone / ".dvc-remote").is_dir()
    records.unlink()
    shutil.rmtree(fresh_clone / ".dvc" / "cache")
    run(["dvc", "pull"], fresh_clone)
    assert records.read_bytes() == original
