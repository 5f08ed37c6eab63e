"""`charlie grpo`: GRPO from an SFT model against the trading rewards (charlie.rl.grpo)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging

import pandas as pd
import pytest

from charlie import dataset as core
from charlie import models
from charlie.backtest.config import BacktestConfig
from charlie.errors import CharlieError
from charlie.rl import grpo
from charlie.rl.config import GRPOTrainConfig

from .conftest import REPO, SAMPLES
from .test_evaluate import trained  # noqa: F401  (the module's SFT model fixture)

PURGED = core.SplitSpec(dt.date(2023, 10, 24), dt.date(2024, 12, 31), 60, dt.date(2025, 1, 1),
                        dt.date(2025, 4, 24), purge_window=30)  # fmt: skip


@pytest.fixture(scope="module")
def episodes_data(tmp_path_factory):
    """The sample's train and validation prompts (purged as `charlie dataset` does), its prices."""
    from datasets import Dataset, DatasetDict

    from charlie.parsing import parse_files

    tmp = tmp_path_factory.mktemp("grpo")
    records = parse_files(sorted((SAMPLES / "xml").glob("*.xml"))).records
    prices = {
        p.stem: pd.read_csv(p, parse_dates=["date"]) for p in (SAMPLES / "prices").glob("*.csv")
    }
    rows, _, _ = core.build_rows(records, prices, PURGED, drop_outside=False)
    data = DatasetDict({"train": Dataset.from_list(rows["train"][-24:]),
                        "validation": Dataset.from_list(rows["validation"][:8])})  # fmt: skip
    data.save_to_disk(str(tmp / "sft_dataset"))
    return tmp, prices


def config(tmp, sft, **kw) -> GRPOTrainConfig:
    settings = {"sft_model": sft, "dataset_dir": tmp / "sft_dataset", "output_dir": tmp / "grpo",
                "eval_rows": 2, "lora_r": 4, "lora_alpha": 8, "num_generations": 2,
                "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4,
                "max_completion_length": 8, "temperature": 1.5, "max_steps": 2,
                "logging_steps": 1, "save_strategy": "steps", "save_steps": 1,
                "report_to": ["none"], "activation_checkpointing": False, "seed": 0, **kw}  # fmt: skip
    return GRPOTrainConfig(**settings)


def test_a_typo_or_a_key_charlie_sets_is_refused_before_anything_loads(tmp_path):
    cfg = config(tmp_path, tmp_path / "no-model", num_generation=4)
    with pytest.raises(CharlieError, match="'num_generation' \\(did you mean 'num_generations'"):
        grpo.check_grpo_keys(cfg)
    cfg = config(tmp_path, tmp_path / "no-model", shuffle_dataset=True)
    with pytest.raises(CharlieError, match="sets shuffle_dataset, which Charlie sets"):
        grpo.check_grpo_keys(cfg)


def test_the_arguments_follow_the_config_and_the_hardware(tmp_path):
    args = grpo.grpo_arguments(config(tmp_path, tmp_path, bf16=True), cuda=False)
    assert (args.use_cpu, args.bf16, args.shuffle_dataset) == (True, False, False)
    assert args.reward_weights == [0.5, 1.0, 1.0] and not args.activation_checkpointing
    off = grpo.grpo_arguments(config(tmp_path, tmp_path, curriculum=False), cuda=False)
    assert off.shuffle_dataset
    with pytest.raises(CharlieError, match="use_vllm needs a CUDA device"):
        grpo.grpo_arguments(config(tmp_path, tmp_path, use_vllm=True), cuda=False)


def test_the_8b_gpu_config_loads_and_hands_vllm_the_stop_tokens():
    """configs/grpo_llama3_8b_vllm_1gpu.yaml cannot run here (CUDA, vLLM); its keys and its
    trl.GRPOConfig are checked as far as a CPU allows (bf16 is validated on the GPU only)."""
    import yaml

    from charlie.config import load_config

    path = REPO / "configs/grpo_llama3_8b_vllm_1gpu.yaml"
    cfg = load_config(path, GRPOTrainConfig)
    grpo.check_grpo_keys(cfg)
    assert cfg.grpo_args["use_vllm"] and cfg.grpo_args["vllm_mode"] == "colocate"
    assert cfg.grpo_args["bf16"] and cfg.curriculum
    with pytest.raises(CharlieError, match="use_vllm needs a CUDA device"):
        grpo.grpo_arguments(cfg, cuda=False)
    settings = {**yaml.safe_load(path.read_text()), "bf16": False}
    args = grpo.grpo_arguments(GRPOTrainConfig.model_validate(settings), cuda=True,
                               stop_ids=[7, 9])  # fmt: skip
    assert args.use_vllm and args.vllm_mode == "colocate"
    assert args.generation_kwargs == {"stop_token_ids": [7, 9]}
    # each optimizer step's completions divide into whole groups
    assert args.generation_batch_size % args.num_generations == 0
    assert args.per_device_train_batch_size % args.num_generations == 0


def test_the_cost_is_the_backtest_configs_round_trip(tmp_path):
    spec = grpo.reward_spec(config(tmp_path, tmp_path), BacktestConfig(transaction_cost_bps=5,
                                                                       slippage_bps=10))  # fmt: skip
    assert spec.cost == pytest.approx(0.003) and spec.bullish_penalty == 1.5


def splits(spec: core.SplitSpec, prices):
    from datasets import Dataset, DatasetDict

    from charlie.parsing import parse_files

    records = parse_files(sorted((SAMPLES / "xml").glob("*.xml"))).records
    rows, _, _ = core.build_rows(records, prices, spec, drop_outside=False)
    return DatasetDict({s: Dataset.from_list(rows[s]) for s in ("train", "validation")})


def test_training_rewards_that_would_read_validation_prices_are_refused(episodes_data):
    tmp, prices = episodes_data
    unpurged = splits(dataclasses.replace(PURGED, purge_window=0), prices)
    with pytest.raises(CharlieError, match="reads prices from the held-out period"):
        grpo.build_splits(config(tmp, tmp), unpurged, prices, "adjusted")
    train, validation, report = grpo.build_splits(config(tmp, tmp), splits(PURGED, prices),
                                                  prices, "adjusted")  # fmt: skip
    assert report["latest_train_reward_end"] < report["heldout_start"]
    assert len(validation) == 2 and train["stage"].is_monotonic_increasing  # curriculum order


def test_grpo_trains_from_the_sft_model_resumes_and_writes_what_evaluate_loads(
    trained,  # noqa: F811
    episodes_data,
    caplog,
):
    tmp, prices = episodes_data
    cfg = config(tmp, trained / "run")
    metrics = grpo.train(cfg, prices, BacktestConfig())
    out = cfg.output_dir
    assert metrics["global_step"] == 2 and (out / "checkpoint-2").is_dir()
    assert models.current_merge(out) == out / models.MERGED  # evaluate loads merged/
    assert (out / "tokenize_report.json").is_file()  # evaluate's budget
    headline = json.loads((out / "grpo_headline.json").read_text())
    assert headline["steps"] == 2 and headline["eval_reward_before"] is not None
    curve = pd.read_csv(out / "rewards.csv")
    assert curve["step"].tolist() == sorted(curve["step"]) and "reward" in curve
    assert any(k.startswith("rewards/return_reward") for k in curve.columns)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["base_model"] == str(trained / "run") and manifest["seed"] == 0

    with caplog.at_level(logging.INFO, logger="charlie.grpo"):
        again = grpo.train(config(tmp, trained / "run", max_steps=3), prices, BacktestConfig())
    assert again["global_step"] == 3
    assert f"resuming from {out / 'checkpoint-2'}" in caplog.text


def test_a_grpo_console_line_leads_with_the_reward_and_the_log_file_keeps_every_figure(caplog):
    from types import SimpleNamespace

    from charlie.training.trainer import LogLines

    step = {"loss": 0.0042, "grad_norm": 0.41, "learning_rate": 5e-05, "num_tokens": 9000.0,
            "completions/mean_length": 143.9, "completions/min_length": 101.0,
            "completions/max_length": 166.0, "completions/clipped_ratio": 0.0,
            "completions/mean_terminated_length": 143.9, "rewards/format_reward/mean": 0.73,
            "rewards/format_reward/std": 0.45, "rewards/return_reward/mean": 0.13,
            "rewards/return_reward/std": 1.13, "reward": 0.169, "reward_std": 1.59,
            "frac_reward_zero_std": 0.04, "entropy": 0.54, "clip_ratio/low_mean": 0.0,
            "epoch": 0.02}  # fmt: skip
    brief = grpo.brief_metrics(step)
    assert list(brief) == ["reward", "reward_std", "frac_reward_zero_std", "format_reward",
                           "return_reward", "loss", "length", "clipped", "learning_rate"]  # fmt: skip
    assert brief["format_reward"] == 0.73 and brief["length"] == 143.9
    evaluation = {f"eval_{k}": v for k, v in step.items() if k not in ("learning_rate", "epoch")}
    shown = grpo.brief_metrics({**evaluation, "eval_runtime": 6.5})
    assert list(shown)[:4] == ["eval_reward", "eval_reward_std", "eval_frac_reward_zero_std",
                               "eval_format_reward"] and shown["eval_runtime"] == 6.5  # fmt: skip
    final = {"train_runtime": 17.0, "train_loss": 0.0187}
    assert grpo.brief_metrics(final) == final

    args = SimpleNamespace(disable_tqdm=True)
    state = SimpleNamespace(is_local_process_zero=True, global_step=10, max_steps=12, epoch=0.02)
    with caplog.at_level(logging.DEBUG, logger="charlie.train"):
        LogLines(grpo.brief_metrics).on_log(args, state, None, logs=step)
    lines = [(r.getMessage(), r.levelno) for r in caplog.records if r.name == "charlie.train"]
    (console, level), (full, full_level) = lines
    assert level == logging.INFO and full_level == logging.DEBUG
    assert console.startswith("step 10/12 (83%), epoch 0.02: reward 0.1690, reward_std 1.5900")
    assert "min_length" not in console and "completions/min_length 101" in full
