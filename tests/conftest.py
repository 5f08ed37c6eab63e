"""Shared fixtures: every test gets its own log directory and a clean CHARLIE_* environment.

The suite runs on pytest-xdist workers (pyproject.toml's addopts: ``-n auto --dist
worksteal``; ``-n 0`` runs it in one process). Everything a test writes lives under its own
``tmp_path`` and every server binds a free port, so the workers share nothing but the CPUs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3_server import s3_endpoint  # noqa: F401  (a fixture: moto's S3 server)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core: torch (and the processes a test starts, which inherit this) computes
    # on one thread instead of one per core, so the workers do not oversubscribe the CPUs. A
    # config's num_threads still wins; set OMP_NUM_THREADS yourself to override this.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _session_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Module-scoped fixtures run before the per-test log directory is set: their commands log
    here, not into the repository's logs/ (where two workers' runs could share a file name)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARLIE_LOG_DIR", str(tmp_path_factory.mktemp("session-logs")))
        yield


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CHARLIE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CHARLIE_LOG_DIR", str(tmp_path / "logs"))


@pytest.fixture
def sample_manifest() -> dict:
    return json.loads((SAMPLES / "manifest.json").read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
