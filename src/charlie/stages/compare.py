"""Compare two models on the same test rows: SFT against GRPO, or any run against another.

    charlie compare                          # params.yaml's `compare`: sft against grpo
    charlie compare --baseline sft --candidate my-run \\
        --candidate-eval results/my-run/eval_results.csv \\
        --candidate-backtest backtests/my-run/baseline.csv

Reads each model's `charlie evaluate` output (eval_results.csv; the rows must be the same, with
the same labels and forward returns) and, when given, its `charlie backtest` daily CSV and
<stem>_metrics.json, and writes beside --out (results/compare/comparison.md):
  comparison.md          the verdict, then accuracy, macro-F1, parse rate; per forward window the
                         hit rate, mean signed return, mean return per trade and per row; the
                         portfolios' total return, Sharpe, max drawdown, turnover, trades and
                         costs; each with its 95% interval and the paired difference
  comparison.json        the same numbers (both models' figures, the paired tests, settings)
  compare_headline.json  both accuracies and the differences runs are compared on (DVC metric)
  comparison.png         mean return per row by window with intervals; the portfolios' growth
The intervals are the evaluation's (the eval config's bootstrap_samples, block_length, seed):
a stationary block bootstrap over dates that resamples both models' rows together, so every
difference is paired; accuracy adds McNemar's exact test. The portfolios are compared on their
daily returns after costs, resampled together in blocks of trading days.

exit codes:
  0  compared (whichever model is ahead: the report says, with its uncertainty)
  2  a missing or malformed input, rows that differ between the models, a bad config
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from charlie import comparison, headlines
from charlie.config import CompareParams, add_flags, load_config, load_params
from charlie.errors import CharlieError
from charlie.evaluation.config import EvalConfig
from charlie.evaluation.uncertainty import effective_block_length
from charlie.headlines import headline_path, write_headline
from charlie.io import atomic_outputs
from charlie.kubeflow import executor as kfp_executor
from charlie.logs import setup_logging
from charlie.strategy import load_strategy, row_units

log = logging.getLogger("charlie.compare")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Both models' names and files from params.yaml's `compare` section, or these flags."""
    add_flags(parser, CompareParams, "compare")
    kfp_executor.add_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Read both models' outputs, compare, write; returns the exit code."""
    setup_logging("compare")
    p = load_params(args).compare
    if p.baseline == p.candidate:
        raise CharlieError(f"--baseline and --candidate are both {p.baseline!r}; name two models.")
    cfg = load_config(p.config, EvalConfig)
    windows = cfg.forward_windows
    block = effective_block_length(cfg.block_length, windows)
    frames = {p.baseline: _read_csv(p.baseline_eval, p.baseline, "evaluation"),
              p.candidate: _read_csv(p.candidate_eval, p.candidate, "evaluation")}  # fmt: skip
    frames = comparison.aligned_rows(frames, windows)
    units = row_units(load_strategy(cfg.strategy_config))
    evaluation = comparison.compare_evaluations(frames, windows, units, block_length=block,
                                                samples=cfg.bootstrap_samples,
                                                permutations=cfg.permutations, seed=cfg.seed)  # fmt: skip
    backtests = {p.baseline: p.baseline_backtest, p.candidate: p.candidate_backtest}
    portfolio, daily = None, None
    if all(backtests.values()):
        daily = {name: _read_csv(path, name, "backtest") for name, path in backtests.items()}
        metrics = {name: _read_metrics(path, name) for name, path in backtests.items()}
        portfolio = comparison.compare_portfolios(daily, metrics, block_length=block,
                                                  samples=cfg.bootstrap_samples, seed=cfg.seed)  # fmt: skip
    elif any(backtests.values()):
        raise CharlieError("give both models' backtests (--baseline-backtest and "
                           "--candidate-backtest), or neither.")  # fmt: skip
    info = {
        "split": cfg.split,
        "verdict": comparison.verdict(evaluation, portfolio),
        "inputs": {
            p.baseline: {"eval_csv": str(p.baseline_eval), "backtest": _str(p.baseline_backtest)},
            p.candidate: {
                "eval_csv": str(p.candidate_eval),
                "backtest": _str(p.candidate_backtest),
            },
        },
        "evaluation": evaluation,
        "portfolio": portfolio,
    }
    out = Path(p.out)
    paths = [out, out.with_name("comparison.json"), headline_path(out, "compare"),
             out.with_name("comparison.png")]  # fmt: skip
    with atomic_outputs(*paths) as (md, js, hl, png):
        md.write_text(comparison.summary_markdown(info), encoding="utf-8")
        js.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        write_headline(hl, headlines.compare(info))
        comparison.comparison_png(info, daily, png)
    log.info("%s", info["verdict"])
    log.info("wrote %s and beside it", out)
    kfp_executor.publish(args.kfp_executor_input, metrics=headlines.compare(info),
                         markdown=out)  # fmt: skip
    return 0


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _read_csv(path: Path, name: str, what: str) -> pd.DataFrame:
    """A model's eval_results.csv or backtest daily CSV, with one sentence when it is not there."""
    stage = "evaluate" if what == "evaluation" else "backtest"
    if not Path(path).is_file():
        raise CharlieError(f"{name}'s {what} {path} does not exist; run `charlie {stage}` "
                           "for that model first.")  # fmt: skip
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else "empty"
        raise CharlieError(f"{name}'s {what} {path} is not a readable CSV: {reason}.") from None
    if what == "backtest" and not {"date", "returns"} <= set(frame.columns):
        raise CharlieError(f"{name}'s backtest {path} lacks the date and returns columns "
                           "`charlie backtest` writes.")  # fmt: skip
    return frame


def _read_metrics(daily_csv: Path, name: str) -> dict:
    """``<stem>_metrics.json`` beside a backtest's daily CSV."""
    path = Path(daily_csv).with_name(f"{Path(daily_csv).stem}_metrics.json")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CharlieError(f"{name}'s backtest metrics {path} do not exist beside its daily "
                           "CSV; run `charlie backtest` for that model.") from None  # fmt: skip
    except ValueError as exc:
        raise CharlieError(f"{name}'s backtest metrics {path} are not JSON: {exc}.") from None
    if not isinstance(info, dict) or "strategy" not in info:
        raise CharlieError(f"{name}'s backtest metrics {path} have no strategy section.")
    return info
