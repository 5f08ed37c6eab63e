"""Align the SFT model with trading rewards: TRL GRPOTrainer, a new LoRA adapter (Phase 2).

    charlie grpo --config configs/grpo_tiny_cpu.yaml           # the CPU demo (dvc repro)
    charlie grpo --config FILE --sft-model checkpoints/my-run --no-resume

Each episode is a prompt of the dataset's train split (a point-in-time snapshot) with the
outcome its action will earn: the executable return over `horizon` trading days (decided at the
close of t, filled at the next open, on the backtest config's price basis) and the ticker's
trailing volatility at t. Rewards (charlie.rl.rewards, weighted by `rewards.weights`): format
(a well-formed thesis), the volatility-aware net return of the completion's own action (after
the backtest config's commission and slippage, in and out; HOLD rewarded only inside the cost
band), and an extra loss on wrong calls, heavier for bullish ones. The stage refuses a config
whose training rewards would read prices from the validation or test period. With
`curriculum: true` the episodes run easy (calm) first.

Writes to output_dir: the GRPO adapter and tokenizer, merged/ (what `charlie evaluate` loads),
checkpoints (resumed from the newest complete one unless --no-resume), TensorBoard runs under
runs/, manifest.json, rewards.csv (the reward per step, train and validation) and
grpo_headline.json (the validation reward before and after, a DVC metric).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from charlie.config import (
    CONFIG,
    PRICE_FLAGS,
    GRPOParams,
    PricesParams,
    add_flags,
    add_resume_flags,
    load_config,
    load_params,
)
from charlie.headlines import SUFFIX
from charlie.kubeflow import executor as kfp_executor
from charlie.logs import setup_logging
from charlie.rl.config import GRPOTrainConfig

log = logging.getLogger("charlie.grpo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The GRPO config file, overrides of its keys, prices, and resume switches."""
    add_flags(parser, GRPOParams, "grpo", ["config"])
    add_flags(parser, GRPOTrainConfig, CONFIG)
    add_flags(parser, PricesParams, "prices", PRICE_FLAGS)
    add_resume_flags(parser)
    kfp_executor.add_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Build the episodes, train, save; returns the exit code."""
    params = load_params(args)
    config_path = Path(params.grpo.config)
    settings = {key: (getattr(params.grpo, key), f"params.yaml grpo.{key}")
                for key in ("sft_model", "dataset_dir", "output_dir")}  # fmt: skip
    cfg = load_config(config_path, GRPOTrainConfig, overrides=args, settings=settings)
    setup_logging("grpo")

    import pandas as pd

    from charlie.evaluation.core import price_window
    from charlie.io import load_dataset_dir, require_dataset_dict
    from charlie.prices.service import load_all_prices
    from charlie.rl import grpo
    from charlie.strategy import load_strategy

    grpo.check_grpo_keys(cfg)  # a typo: before the data, the prices and the weights
    strategy = load_strategy(cfg.backtest_config)
    data = load_dataset_dir(require_dataset_dict(cfg.dataset_dir))
    frame = pd.concat([data[s].select_columns(["ticker", "as_of_date"]).to_pandas()
                       for s in ("train", "validation") if s in data])  # fmt: skip
    prices = load_all_prices(
        price_window(frame, [cfg.horizon, cfg.vol_window]), params.prices
    ).frames
    metrics = grpo.train(cfg, prices, strategy, config_path=config_path,
                         resume=getattr(args, "resume", None))  # fmt: skip
    log.info("GRPO: %d steps; validation reward %s before, %s after; wrote %s",
             metrics.get("global_step", 0), _fmt(metrics.get("before_eval_reward")),
             _fmt(metrics.get("eval_reward")), cfg.output_dir)  # fmt: skip
    headline = cfg.output_dir / f"grpo{SUFFIX}"
    kfp_executor.publish(args.kfp_executor_input,
                         metrics=json.loads(headline.read_text()) if headline.is_file() else None)  # fmt: skip
    return 0


def _fmt(value: object) -> str:
    return "n/a" if value is None else f"{float(value):+.3f}"  # type: ignore[arg-type]
