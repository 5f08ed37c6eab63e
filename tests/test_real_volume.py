"""The seed's volume end to end: 20 tickers of full-length theses (≈ 2.5 kB each, 7,520 theses).

The bundled sample's short theses hide what real lengths do to a pipeline. This runs the real
commands on a generated real-volume corpus (`charlie sample --tickers 20 --detail full`):
parse → dataset → init-model → tokenize (max_length: auto) → two training steps → evaluate,
and checks that no example is trimmed or dropped, that the prompts keep their instruction and
header, and that the generation budget evaluation chooses reaches the action of every true
completion of the test split.
"""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from charlie import ACTIONS
from charlie.cli import main
from charlie.inference import extract_action
from charlie.prompts import PROMPT_HEADER

from .conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A project folder: the repository's params.yaml and configs/, its own data."""
    root = tmp_path_factory.mktemp("real-volume")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copytree(REPO / "configs", root / "configs")
    quick = yaml.safe_load((root / "configs/sft_tiny_lora_cpu.yaml").read_text())
    quick.update(max_steps=2, eval_strategy="no", save_strategy="no", logging_steps=1)
    (root / "configs/sft_quick.yaml").write_text(yaml.safe_dump(quick))
    return root


def test_real_volume_trains_on_whole_examples_and_evaluation_reaches_the_action(
    workspace, monkeypatch, capsys
):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("CHARLIE_LOG_DIR", str(workspace / "logs"))
    monkeypatch.setenv("CHARLIE_PARSE__INPUT_DIR", "corpus/xml")
    monkeypatch.setenv("CHARLIE_PRICES__FILE_DIR", "corpus/prices")
    monkeypatch.setenv("CHARLIE_TRAIN__CONFIG", "configs/sft_quick.yaml")
    sample = [
        "sample",
        "--tickers",
        "20",
        "--detail",
        "full",
        "--no-ipo-ticker",
        "--out-dir",
        "corpus",
    ]
    for argv in (sample, ["parse"], ["dataset"], ["init-model"], ["tokenize"]):
        assert main(argv) == 0, argv

    # ---------------------------------------------------------------- tokenize: whole examples
    report = json.loads(Path("data/hf_datasets/tokenized/tokenize_report.json").read_text())
    assert report["max_length_setting"] == "auto"
    assert report["max_length"] <= report["context_length"] == 1024
    longest = max(s["tokens"]["max"] for s in report["splits"].values())
    assert report["max_length"] == longest  # the smallest length that fits every example
    for split, info in report["splits"].items():
        assert info["examples"] > 0 and info["trimmed"] == 0 and info["dropped"] == 0, split
        assert set(info["by_action"]) == set(ACTIONS), split
        assert sum(a["examples"] for a in info["by_action"].values()) == info["examples"]
        assert info["completion_tokens"]["p50"] > 400, split  # real-length theses
    assert report["splits"]["test"]["examples"] > 1400

    from charlie.io import load_dataset_dir

    tokenized = load_dataset_dir("data/hf_datasets/tokenized")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained("data/hf_datasets/tokenized/tokenizer")
    for row in tokenized["train"].select(range(0, len(tokenized["train"]), 500)):
        text = tokenizer.decode(row["input_ids"])
        assert PROMPT_HEADER in text and "Market snapshot for " in text  # headers kept

    # ---------------------------------------------------------------- train and evaluate
    assert main(["train"]) == 0
    assert Path("checkpoints/sft/tokenize_report.json").is_file()
    # Hugging Face cards, not TRL's template, and a base that loads from any directory
    adapter = json.loads(Path("checkpoints/sft/adapter_config.json").read_text())
    base = Path(adapter["base_model_name_or_path"])
    assert base.is_absolute() and base == Path("models/tiny").resolve()
    for folder in [Path("checkpoints/sft")] + (
        [m] if (m := Path("checkpoints/sft/merged")).is_dir() else []
    ):
        card = (folder / "README.md").read_text()
        assert card.startswith("---\n") and f'base_model: "{base}"' in card
        assert "huggingface.co/None" not in card and "## Intended use" in card
        assert "## How to load" in card and "Rows: train " in card
    readme = Path("data/hf_datasets/sft_dataset/README.md").read_text()
    assert (
        readme.startswith("---\n") and "task_categories:" in readme and "# Dataset card" in readme
    )
    assert main(["evaluate", "--limit", "6", "--min-parse-rate", "0"]) == 0
    metrics = json.loads(Path("results/eval_metrics.json").read_text())
    budget = metrics["generation"]["max_new_tokens"]
    test_completions = report["splits"]["test"]["completion_tokens"]
    assert budget >= test_completions["max"]
    assert metrics["generation"]["prompts_trimmed"] == 0

    # ---------------------------------------------------------------- the budget reaches the action
    sft = load_dataset_dir("data/hf_datasets/sft_dataset")["test"]
    cut = [
        tokenizer.decode(tokenizer(c, add_special_tokens=False)["input_ids"][:budget])
        for c in sft["completion"]
    ]
    predicted = [extract_action(text) for text in cut]
    assert predicted == list(sft["action"])  # parse rate 1.0, and each one the true action
    capsys.readouterr()
