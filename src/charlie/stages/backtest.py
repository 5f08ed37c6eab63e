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

Predictions without a single parseable action, or with a parse rate below the config's
min_parse_rate, are refused: such a backtest would measure the evaluation's failure, not the
model. --force runs them anyway, with a warning, and records inputs.forced: true.

Price flags (they override params.yaml's `prices` section; absent, it decides):
  --price-providers A,B   providers tried in order: file, eodhd, yfinance (prices.providers)
  --price-dir DIR|s3://bucket/prefix/
                          the file provider's directory (prices.file_dir); an s3:// prefix is
                          downloaded once per version into <cache dir>/file/s3/<sha256>/
                          (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)
  --price-cache-dir DIR   the parquet cache of network answers (prices.cache_dir), read before
                          any request: a rerun on a persistent cache asks the network only for
                          ranges it lacks (and days from today on, which are not final yet)
The EODHD key comes only from EODHD_API_KEY (environment or .env); the API root from
CHARLIE_PRICES__EODHD__BASE_URL or params.yaml.

exit codes:
  0  completed
  2  the eval CSV is missing, empty or malformed, has no parseable action or a parse rate below
     min_parse_rate (without --force), the config is invalid, or prices are missing
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from charlie.backtest.config import BacktestConfig
from charlie.backtest.core import headline, run_backtest
from charlie.backtest.panel import (
    MAX_GAP_DAYS,
    drop_isolated,
    parse_rate_problem,
    prepare_predictions,
    price_window,
    read_eval_csv,
)
from charlie.backtest.report import write_outputs
from charlie.config import (
    CONFIG,
    PRICE_FLAGS,
    BacktestParams,
    PricesParams,
    add_flags,
    load_config,
    load_params,
    switch,
)
from charlie.errors import CharlieError
from charlie.kubeflow import executor as kfp_executor
from charlie.logs import setup_logging
from charlie.prices.service import load_all_prices

log = logging.getLogger("charlie.backtest")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Paths from params.yaml's `backtest` section, prices from `prices`; the --config keys."""
    add_flags(parser, BacktestParams, "backtest")
    add_flags(parser, BacktestConfig, CONFIG)
    add_flags(parser, PricesParams, "prices", PRICE_FLAGS)
    parser.add_argument(
        "--force", nargs="?", const=True, default=False, type=switch,
        help="backtest predictions that fail the parse-rate gate (none parseable, or a parse "
        "rate below min_parse_rate) anyway; the report and metrics say so (inputs.forced); "
        "also --force=true|false, as a pipeline passes it",
    )  # fmt: skip
    kfp_executor.add_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Load, simulate, write the outputs and log the headline numbers; returns the exit code."""
    log_file = setup_logging("backtest")
    params = load_params(args)
    paths = params.backtest
    config = load_config(paths.config, BacktestConfig, overrides=args)
    log.debug("backtest config %s: %s", paths.config, config.model_dump_json())

    source = f"eval CSV {paths.eval_csv}"
    frame = read_eval_csv(paths.eval_csv)
    predictions, strays = drop_isolated(prepare_predictions(frame, source))
    if len(strays):
        first = strays.iloc[0]
        log.warning("dropped %d prediction(s) dated more than %d days from all the others "
                    "(e.g. %s %s)", len(strays), MAX_GAP_DAYS, first["ticker"],
                    f"{first['as_of_date']:%Y-%m-%d}")  # fmt: skip
    predictions.attrs["isolated"] = len(strays)
    problem = parse_rate_problem(predictions, config.min_parse_rate, source, frame.get("truncated"))
    forced = bool(problem) and args.force
    if problem and not forced:
        raise CharlieError(f"{problem}; fix the evaluation (see its eval_metrics.json) or "
                           "lower min_parse_rate, or pass --force to backtest them anyway.")  # fmt: skip
    if forced:
        log.warning("--force: backtesting anyway, though the %s", problem)
    log.info(
        "%d predictions for %d tickers from %s",
        len(predictions),
        predictions["ticker"].nunique(),
        paths.eval_csv,
    )
    prices = load_all_prices(price_window(predictions), params.prices)
    result = run_backtest(predictions, prices.frames, config, forced=forced)
    written = write_outputs(result, paths.out, evaluation=evaluation_beside(paths.eval_csv))

    _summary(result.metrics)
    log.info("wrote %s (log: %s)", ", ".join(str(p) for p in written.values()), log_file)
    kfp_executor.publish(args.kfp_executor_input, metrics=headline(result.metrics),
                         html=written["report"])  # fmt: skip
    return 0


def evaluation_beside(eval_csv: Path) -> dict | None:
    """The evaluation's metrics (``eval_metrics.json`` beside the predictions), for the report's
    model-versus-baselines table; None when there are none or they cannot be read."""
    path = Path(eval_csv).with_name("eval_metrics.json")
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("%s cannot be read: the report shows no model-versus-baselines table", path)
        return None
    return info if isinstance(info, dict) and "baselines" in info else None


def _known(value: float | int | None, fmt: str, missing: str) -> str:
    """``format(value, fmt)``, or ``missing`` where it is None or NaN (the JSON's null)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, fmt)


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
    for name, key in (("strategy", "strategy"), ("matched", "benchmark_exposure_matched"),
                      ("benchmark", "benchmark")):  # fmt: skip
        s = m.get(key)
        if not s:
            continue
        cagr = _known(s.get("cagr"), ".2%", "n/a")  # under a year: not annualised
        trades = _known(s.get("n_trades"), ".0f", "")  # a scaled series trades nothing
        log.info(
            f"{name:<12}{s['total_return']:>9.2%}{cagr:>9}{s['sharpe']:>8.2f}"
            f"{s['max_drawdown']:>9.2%}{trades:>8}"
        )
