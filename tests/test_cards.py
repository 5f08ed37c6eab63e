"""Model and dataset cards: front matter the hub reads, and what a user needs to know."""

import yaml

from charlie.cards import data_digest, dataset_card, model_card

BASE = {"ref": "meta-llama/Llama-3.1-8B-Instruct", "path": "/cache/llama", "revision": "abc123",
        "source": "hub"}  # fmt: skip
CONFIG = {"base_model": "/cache/llama", "method": "qlora", "lora_r": 16, "lora_alpha": 32,
          "lora_dropout": 0.05, "lora_target_modules": ["q_proj", "v_proj"], "seed": 7,
          "dataset_dir": "data/hf_datasets/tokenized", "max_length": 4096,
          "over_length": "trim_prompt"}  # fmt: skip
METRICS = {"global_step": 120, "epoch": 2.0, "train_loss": 0.91, "eval_loss": 0.85}


def _front(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_adapter_card_names_its_hub_base_data_version_and_how_to_load_it():
    card = model_card(name="sft", base=BASE, config=CONFIG, metrics=METRICS,
                      data_files={"a.arrow": "1" * 64}, rows={"train": 900, "test": 100},
                      merged=False, git={"commit": "deadbeef"})  # fmt: skip
    front = _front(card)
    assert front["base_model"] == "meta-llama/Llama-3.1-8B-Instruct"  # the hub id, not the cache
    assert front["library_name"] == "peft" and "qlora" in front["tags"]
    assert "revision `abc123`" in card and data_digest({"a.arrow": "1" * 64}) in card
    assert "Rows: train 900, test 100" in card and "LoRA rank 16, alpha 32" in card
    assert "train loss 0.9100, validation loss 0.8500" in card and "`deadbeef`" in card
    assert 'AutoPeftModelForCausalLM.from_pretrained("sft")' in card
    assert "Not investment advice" in card


def test_the_merged_card_is_a_transformers_model_and_a_local_base_is_an_absolute_path():
    local = {"ref": "models/tiny", "path": "/repo/models/tiny", "revision": None, "source": "local"}
    card = model_card(name="merged", base=local, config={**CONFIG, "method": "lora"},
                      metrics=METRICS, data_files={}, rows={"train": 1}, merged=True)  # fmt: skip
    front = _front(card)
    assert front["base_model"] == "/repo/models/tiny" and front["library_name"] == "transformers"
    assert 'AutoModelForCausalLM.from_pretrained("merged")' in card and "peft" not in front["tags"]


def test_the_dataset_card_has_hub_front_matter_before_charlies_markdown():
    card = dataset_card({"records": {"train": 1088, "validation": 177, "test": 456},
                         "input_sha256": "f" * 64}, "# Dataset card\n\nsplits...\n")  # fmt: skip
    front = _front(card)
    assert front["size_categories"] == ["1K<n<10K"] and front["task_categories"] == [
        "text-generation"
    ]
    files = front["configs"][0]["data_files"]
    assert [f["split"] for f in files] == ["train", "validation", "test"]
    assert files[0]["path"] == "train/*.arrow"
    assert card.endswith("# Dataset card\n\nsplits...\n") and "f" * 64 in card


def test_the_card_has_the_evaluation_and_backtest_numbers_when_given():
    evaluation = {"accuracy": 0.82, "accuracy_ci95_lo": 0.80, "accuracy_ci95_hi": 0.84,
                  "macro_f1": 0.817, "parse_rate": 1.0, "edge_over_best_baseline": 0.489,
                  "p_rotate_accuracy": 0.002, "mean_trade_return_1d": 0.0052}  # fmt: skip
    backtest = {"total_return": 0.0166, "sharpe": 4.01, "sharpe_ci_lo": 0.44, "dsr": 0.92,
                "max_drawdown": -0.0051, "trades": 107, "costs_paid": 3342.4,
                "matched_benchmark_return": 0.0044}  # fmt: skip
    card = model_card(name="sft", base=BASE, config=CONFIG, metrics=METRICS, data_files={},
                      rows={}, merged=False, evaluation=evaluation, backtest=backtest)  # fmt: skip
    assert "| accuracy | 0.820 (95% 0.800 – 0.840) |" in card
    assert "| edge over the strongest baseline (accuracy) | +0.489 |" in card
    assert "| backtest Sharpe | 4.01 (95% lower bound 0.44; deflated Sharpe 0.92) |" in card
    assert "| trades, costs paid | 107, 3,342 |" in card
    without = model_card(name="sft", base=BASE, config=CONFIG, metrics=METRICS, data_files={},
                         rows={}, merged=False)  # fmt: skip
    assert "`charlie card` copies this folder with their numbers" in without


def test_charlie_card_copies_the_model_with_a_complete_card_and_leaves_the_output_alone(
    tmp_path, monkeypatch, capsys
):
    import json

    from charlie.cli import main

    model = tmp_path / "checkpoints" / "sft"
    (model / "merged").mkdir(parents=True)
    (model / "checkpoint-5").mkdir()
    (model / "adapter_model.safetensors").write_bytes(b"weights")
    (model / "README.md").write_text("the training-time card\n")
    (model / "merged" / "README.md").write_text("the training-time card\n")
    (model / "manifest.json").write_text(json.dumps({
        "config": CONFIG, "final_metrics": METRICS, "data_files": {"a": "b"},
        "git": {"commit": "c0ffee"}}))  # fmt: skip
    (model / "base_model.json").write_text(json.dumps(BASE))
    (model / "tokenize_report.json").write_text(json.dumps(
        {"splits": {"train": {"examples": 900}, "test": {"examples": 100}}}))  # fmt: skip
    heads = tmp_path / "eval.json", tmp_path / "bt.json"
    heads[0].write_text(json.dumps({"accuracy": 0.5}))
    heads[1].write_text(json.dumps({"sharpe": 1.5}))
    monkeypatch.chdir(tmp_path)
    argv = ["card", "--model-dir", str(model), "--eval-headline", str(heads[0]),
            "--backtest-headline", str(heads[1])]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    out = tmp_path / "dist" / "sft"
    assert (out / "adapter_model.safetensors").read_bytes() == b"weights"
    assert not (out / "checkpoint-5").exists()  # checkpoints and TensorBoard runs stay behind
    for folder, library in ((out, "peft"), (out / "merged", "transformers")):
        card = (folder / "README.md").read_text()
        assert f'library_name: "{library}"' in card and "| accuracy | 0.500" in card
        assert "| backtest Sharpe | 1.50" in card and "Rows: train 900, test 100" in card
    assert (model / "README.md").read_text() == "the training-time card\n"  # not written through
    assert main([*argv[:-2], "--backtest-headline", str(tmp_path / "none.json")]) == 2
    assert "none.json does not exist: run `charlie backtest` first" in capsys.readouterr().err
    assert main([*argv, "--out", str(model / "x")]) == 2
    assert "is inside --model-dir" in capsys.readouterr().err
