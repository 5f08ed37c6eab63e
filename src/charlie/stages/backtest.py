"""Backtest the model's predictions as a daily, cost-aware portfolio against buy-and-hold.

    charlie backtest --eval-csv results/eval_results.csv \\
        --config configs/backtest_config.yaml --out backtests/baseline.csv

Reads the predictions `charlie evaluate` wrote (ticker, as_of_date, pred_action; UNPARSEABLE
is traded like HOLD and counted), fetches each ticker's bars through params.yaml's `prices`
providers, and simulates: target weights from the actions (the config's action_units and
position_sizing), decided at the close of as_of_date, filled at the next trading day's open
with slippage against the trade and commission on the traded notional, marked at the close,
never filled on a missing price. The same tickers bought once in equal weights under the same
costs are the benchmark. Writes, next to --out and named after its stem:
  <stem>.csv              date, equity, returns, cash, gross_exposure, net_exposure,
                          turnover, costs (one row per trading day)
  <stem>_trades.csv       one row per fill
  <stem>_metrics.json     strategy and benchmark metrics (empyrical's conventions), the cost
                          sensitivity table, per-ticker P&L, and every convention in words
  <stem>_equity.png       equity against the benchmark; <stem>_drawdown.png: drawdowns
  <stem>_report.html      all of it on one self-contained page

Outputs are replaced atomically and together; a failed run leaves the previous ones intact.

exit codes:
  0  completed
  2  the eval CSV is missing, empty or malformed, the config is invalid, or prices are missing
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "simulate the predictions as a cost-aware daily portfolio, with an HTML report"
log = logging.getLogger("charlie.backtest")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Paths; costs, sizing and the action mapping live in the --config file."""
    parser.add_argument(
        "--eval-csv",
        type=Path,
        default=Path("results/eval_results.csv"),
        help="predictions from `charlie evaluate` (default: %(default)s)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("configs/backtest_config.yaml"),
        help="costs, sizing and action mapping (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("backtests/baseline.csv"),
        help="daily CSV; the other outputs are named after its stem (default: %(default)s)",
    )

    from charlie import kfp_executor

    kfp_executor.add_argument(parser)


def read_eval_csv(path: Path):
    """The eval CSV as a frame of strings, with one sentence if it is missing or empty."""
    import pandas as pd

    from charlie.errors import CharlieError

    if not path.is_file():
        raise CharlieError(f"eval CSV {path} does not exist; run `charlie evaluate` first.")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise CharlieError(f"eval CSV {path} is empty.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0].rstrip(".")
        raise CharlieError(f"eval CSV {path} is not a readable CSV: {reason}.") from None


def run(args: argparse.Namespace) -> int:
    """Load, simulate, write the outputs and log the headline numbers; returns the exit code."""
    from charlie.backtest.config import load_backtest_config
    from charlie.backtest.report import (
        prepare_predictions,
        price_window,
        run_backtest,
        write_outputs,
    )
    from charlie.config import load_params
    from charlie.logs import setup_logging
    from charlie.stages.prices import load_all_prices

    log_file = setup_logging("backtest")
    config = load_backtest_config(args.config)
    prices_params = load_params(args.params).prices
    log.debug("backtest config %s: %s", args.config, config.model_dump_json())

    predictions = prepare_predictions(read_eval_csv(args.eval_csv), f"eval CSV {args.eval_csv}")
    log.info(
        "%d predictions for %d tickers from %s",
        len(predictions),
        predictions["ticker"].nunique(),
        args.eval_csv,
    )
    prices = load_all_prices(price_window(predictions), prices_params)
    result = run_backtest(predictions, prices.frames, config)
    paths = write_outputs(result, args.out)

    _summary(result.metrics)
    log.info("wrote %s (log: %s)", ", ".join(str(p) for p in paths.values()), log_file)
    from charlie.backtest.report import headline
    from charlie.kfp_executor import publish

    publish(args.kfp_executor_input, metrics=headline(result.metrics),
            html=paths["report"])  # fmt: skip
    return 0


def _summary(m: dict) -> None:
    inputs = m["inputs"]
    log.info(
        "%d trading days %s .. %s; predictions: %s",
        inputs["days"],
        inputs["first_day"],
        inputs["last_day"],
        "  ".join(f"{a} {n}" for a, n in inputs["by_action"].items()),
    )
    log.info(f"{'':<12}{'return':>9}{'CAGR':>9}{'Sharpe':>8}{'max DD':>9}{'trades':>8}")
    for name in ("strategy", "benchmark"):
        s = m[name]
        log.info(
            f"{name:<12}{s['total_return']:>9.2%}{s['cagr']:>9.2%}{s['sharpe']:>8.2f}"
            f"{s['max_drawdown']:>9.2%}{s['n_trades']:>8}"
        )
