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


def lock_stages(text: str, names: tuple[str, ...]) -> dict:
    import yaml

    return {name: yaml.safe_load(text)["stages"][name] for name in names}


DATA_STAGES = ("parse", "dataset")  # the training stages are exercised by their own tests


def test_repro_on_a_fresh_clone_then_a_second_repro_does_nothing(fresh_clone, monkeypatch):
    # As on users' machines: Python writes __pycache__ into the stages' source folders.
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    committed_lock = lock_stages((fresh_clone / "dvc.lock").read_text(), DATA_STAGES)
    metrics = ("data/jsonl/parse_report.json", "data/hf_datasets/dataset_card.json")
    committed = {p: (fresh_clone / p).read_text() for p in metrics}
    # Up to tokenize: its dataset.map must leave the dataset stage's output as it was.
    output = run(["dvc", "repro", "tokenize"], fresh_clone)
    # The committed lock and metrics are what the committed code produces, so `dvc metrics
    # diff` and `dvc status` mean something; `make demo` refreshes them.
    assert lock_stages((fresh_clone / "dvc.lock").read_text(), DATA_STAGES) == committed_lock, (
        "dvc.lock is stale: run `make demo` and commit it"
    )
    for path, text in committed.items():
        assert (fresh_clone / path).read_text() == text, f"{path} is stale: run `make demo`"
    for stage in ("parse", "dataset", "init-model", "tokenize"):
        assert f"Running stage '{stage}'" in output
    assert (fresh_clone / "data/hf_datasets/sft_dataset/dataset_dict.json").is_file()
    report = json.loads((fresh_clone / "data/jsonl/parse_report.json").read_text())
    assert report["balanced"] is True and report["totals"]["records"] > 2000
    lines = (fresh_clone / "data/jsonl/records.jsonl").read_text().splitlines()
    assert len(lines) == report["totals"]["records"]

    again = run(["dvc", "repro", "tokenize"], fresh_clone)
    assert "Running stage" not in again
    assert "up to date" in run(["dvc", "status", "tokenize"], fresh_clone)
    shown = run(["dvc", "metrics", "show"], fresh_clone)  # the headlines: short plain keys
    assert "data/jsonl/parse_headline.json" in shown and "theses_seen" in shown
    assert "totals." not in shown and "always BUY" not in shown


def test_outputs_round_trip_through_the_default_offline_remote(fresh_clone):
    run(["dvc", "repro", "dataset"], fresh_clone)
    records = fresh_clone / "data/jsonl/records.jsonl"
    original = records.read_bytes()
    run(["dvc", "push", "--with-deps", "dataset"], fresh_clone)
    assert (fresh_clone / ".dvc-remote").is_dir()
    records.unlink()
    shutil.rmtree(fresh_clone / ".dvc" / "cache")
    run(["dvc", "pull", "--with-deps", "dataset"], fresh_clone)
    assert records.read_bytes() == original


def test_a_parameter_sweep_with_dvc_exp_run(fresh_clone):
    run(["git", "add", "-A"], fresh_clone)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid",
         "commit", "-q", "-m", "clone"], fresh_clone)  # fmt: skip
    output = run(["dvc", "exp", "run", "dataset", "-S", "dataset.embargo_days=5"], fresh_clone)
    assert "Running stage 'dataset'" in output
    card = json.loads((fresh_clone / "data/hf_datasets/dataset_card.json").read_text())
    assert card["split_settings"]["embargo_days"] == 5 and card["dropped"]["embargo"] > 0
    shown = run(["dvc", "exp", "show", "--csv"], fresh_clone)
    assert "dataset.embargo_days" in shown.splitlines()[0]


def test_bytecode_in_a_dependency_folder_does_not_change_the_stage():
    """Stages depending on src/charlie/evaluation stay clean where Python writes __pycache__."""
    for path in ("src/charlie/evaluation/__pycache__/report.cpython-311.pyc",
                 "src/charlie/backtest/engine.pyc"):  # fmt: skip
        assert path in run([str(BIN / "dvc"), "check-ignore", path], REPO)


def test_switching_train_config_alone_keeps_dvc_repro_whole(fresh_clone):
    """Another training config (another output_dir) through evaluate: params.yaml's paths win."""
    import yaml

    config = yaml.safe_load((fresh_clone / "configs/sft_tiny_lora_cpu.yaml").read_text())
    config.update(output_dir="checkpoints/my-run", dataset_dir="data/elsewhere", max_steps=2,
                  eval_strategy="no", save_strategy="no")  # fmt: skip
    (fresh_clone / "configs/sft_mine.yaml").write_text(yaml.safe_dump(config))
    # A quick evaluation (a 2-step model writes no actions): the speed-up, not the point.
    quick = yaml.safe_load((fresh_clone / "configs/eval_config.yaml").read_text())
    quick.update(split="validation", max_new_tokens=8, min_parse_rate=0.0)
    (fresh_clone / "configs/eval_quick.yaml").write_text(yaml.safe_dump(quick))
    params = yaml.safe_load((fresh_clone / "params.yaml").read_text())
    params["train"]["config"] = "configs/sft_mine.yaml"
    params["evaluate"]["config"] = "configs/eval_quick.yaml"
    (fresh_clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    output = run(["dvc", "repro", "evaluate@sft"], fresh_clone)
    assert "Running stage 'evaluate@sft'" in output
    model = fresh_clone / params["train"]["output_dir"]
    assert (model / "adapter_config.json").is_file() and (model / "manifest.json").is_file()
    assert not (fresh_clone / "checkpoints/my-run").exists()
    metrics = json.loads((fresh_clone / "results/eval_metrics.json").read_text())
    assert metrics["classification"]["n"] > 0
    assert "up to date" in run(["dvc", "status", "evaluate@sft"], fresh_clone)
