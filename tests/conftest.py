"""Shared fixtures: every test gets its own log directory and a clean CHARLIE_* environment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.s3_server import s3_endpoint  # noqa: F401  (a fixture: moto's S3 server)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"


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
