"""The evaluation's computation, pure: predictions and prices in, the metrics dict out.

The stage generates the predictions and fetches the prices; these functions turn them into
the per-sample frame (``eval_results.csv``) and ``eval_metrics.json``'s content, and
:mod:`charlie.evaluation.report` writes both.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from charlie.backtest.config import BacktestConfig
from charlie.errors import CharlieError
from charlie.evaluation import metrics as m
from charlie.evaluation import uncertainty as u
from charlie.evaluation.config import EvalConfig
from charlie.evaluation.returns import executable_returns, forward_returns, momentum_sign
from charlie.strategy import describe, load_strategy, row_units

CONVENTIONS = [
    "Forward returns over h trading days, t being the last bar on or before the record's date "
    "(decided at its close): executable = adj_close(t+h) / adj_open(t+1) - 1, the fill at the "
    "next open as in the backtest (adj_open = open x adj_close / close; h = 1 is the next "
    "day's open to close; with the backtest's price_basis: raw, close(t+h) / open(t+1) - 1), "
    "and close to close = adj_close(t+h) / adj_close(t) - 1; NaN when the window runs past the "
    "data (counted, not dropped).",
    "Sign view (hit rate, mean signed, mean/std in the sign table; the mean_signed_return "
    "statistics): BUY/STRONG_BUY +1, SELL/STRONG_SELL -1 (shorts, whatever the backtest "
    "allows) times the close-to-close return; HOLD and UNPARSEABLE take no position and are "
    "reported apart.",
    "Actions: the action special token first, else the last action word of the generation; "
    "'unparseable' counts every row without an action, 'truncated' the subset that reached "
    "max_new_tokens before any action token (their action is UNPARSEABLE even when the cut-off "
    "reasoning holds action words).",
    "Generation: greedy, stopped at </action> (or end of sequence); max_new_tokens auto = "
    "max(ceil(p99 x (1 + margin)), max) of the completion token counts over the tokenize "
    "report's splits, the margin shrunk (never below the max) so the longest prompt fits the "
    "context; prompts that still do not fit lose whole snapshot sections, least important "
    "first, as in training (counted as prompts_trimmed).",
    "Sharpe-style ratios: mean / std (ddof=1) of the per-trade, per-row or signed returns, per "
    "window, not annualised (overlapping multi-day windows make sqrt(252) scaling wrong).",
    "Baselines act on exactly the model's rows; the majority class is the training split's.",
    "Truncated rows (generation cut by the budget) hold no position and count as wrong in "
    "every interval and test, and stay in place, flat, in the permutation nulls; their count is "
    "reported apart.",
]
RANDOM = "random at the model's frequencies"


def conventions(block_length: int, strategy: str | None = None) -> list[str]:
    """The conventions stated in every report, the strategy and the block length among them.

    Args:
        block_length: The bootstrap's mean block length, in dates.
        strategy: Where the strategy comes from and its units per action
            (:func:`charlie.strategy.describe`).
    """
    return [
        "Strategy (the headline trade metrics, and every baseline's): the backtest config's "
        f"action_units and allow_shorts{f' ({strategy})' if strategy else ''}, one row at a "
        "time; HOLD and UNPARSEABLE hold 0 units per row (the backtest keeps the previous "
        "target instead, which one row does not know). A row's trade return is units x its "
        "executable forward return; 'per trade' means over the rows with a nonzero position, "
        "'per row' over every row with a known return, flat rows 0. The same means over "
        "close-to-close returns are the labelled second figure.",
        *CONVENTIONS,
        f"Intervals: 95% percentile, stationary block bootstrap over dates, seeded: whole record "
        f"dates (all tickers of a date together) resampled in runs of consecutive dates of mean "
        f"length {block_length}, since overlapping forward windows and same-day correlation "
        f"across tickers make row-level intervals too narrow.",
        "Nulls: the model's own predictions (a) shuffled across dates within each ticker and "
        "(b) each ticker's sequence rotated in time by a random offset (its pattern of actions "
        "kept); the p-value is (1 + #{null >= observed}) / (1 + permutations where the statistic "
        "is defined), the probability "
        "that random actions at the model's own frequencies do as well. The random baseline row "
        "is the shuffle null's mean and central 95%.",
        "Paired tests against the strongest naive baseline (majority, always BUY, momentum; the "
        "best per statistic: accuracy, and per window the mean per trade, per row and signed): McNemar's exact test on the "
        "discordant rows for accuracy (it assumes independent rows), and the paired block "
        "bootstrap interval of the difference; an edge is distinguishable from zero only when "
        "that interval excludes 0 (and, for accuracy, McNemar p < 0.05).",
    ]


HISTORY = dt.timedelta(days=40)  # calendar days before the first record: the 20-day momentum


def prediction_frame(
    rows: Mapping[str, Sequence[Any]],
    pred: Sequence[str],
    truncated: Sequence[bool] | None = None,
) -> pd.DataFrame:
    """One row per evaluated sample: uid, ticker, as_of_date, true_action, pred_action, correct,
    truncated.

    Args:
        rows: The split's columns (a ``datasets.Dataset`` or a dict of lists).
        pred: The action extracted from each row's generation, in row order.
        truncated: Per row, whether generation reached max_new_tokens before any action token
            (default: none was).
    """
    frame = pd.DataFrame({"uid": rows["uid"], "ticker": rows["ticker"], "as_of_date": rows["as_of_date"],
                          "true_action": rows["action"], "pred_action": list(pred)})  # fmt: skip
    frame["correct"] = frame["true_action"] == frame["pred_action"]
    frame["truncated"] = [False] * len(frame) if truncated is None else [bool(t) for t in truncated]
    return frame


def price_window(
    frame: pd.DataFrame, forward_windows: Sequence[int]
) -> dict[str, tuple[dt.date, dt.date]]:
    """Per ticker, the calendar dates whose bars the forward returns and the momentum need.

    From ``HISTORY`` before the first record (the momentum baseline looks back) to twice the
    longest window plus ten days after the last (trading days are fewer than calendar days).
    """
    margin = dt.timedelta(days=max(forward_windows) * 2 + 10)
    return {
        str(ticker): (
            dt.date.fromisoformat(group["as_of_date"].min()) - HISTORY,
            dt.date.fromisoformat(group["as_of_date"].max()) + margin,
        )
        for ticker, group in frame.groupby("ticker")
    }


def attach_forward_returns(
    frame: pd.DataFrame,
    prices: Mapping[str, pd.DataFrame],
    forward_windows: Sequence[int],
    price_basis: str = "adjusted",
) -> tuple[pd.DataFrame, np.ndarray]:
    """``frame`` with ``fwd_ret_<h>`` (close to close) and ``exec_ret_<h>`` (next open to
    close) columns per window, and the 20-day momentum sign per row.

    Args:
        frame: The per-sample frame (:func:`prediction_frame`); it is not modified.
        prices: Daily bars per ticker (``date``, ``open``, ``close``, ``adj_close``), covering
            :func:`price_window`.
        forward_windows: The windows h, in trading days.
        price_basis: The backtest's ``price_basis`` for the executable return (adjusted or
            raw; :func:`executable_returns`).

    Returns:
        A copy of ``frame`` with the returns (NaN past the data), and +1/-1/0 per row.

    Raises:
        CharlieError: A ticker's bars lack a column the returns need.
    """
    out = frame.copy()
    momentum = np.zeros(len(out))
    returns = {h: np.full(len(out), np.nan) for h in forward_windows}
    executable = {h: np.full(len(out), np.nan) for h in forward_windows}
    for ticker, pos in out.groupby("ticker").indices.items():
        bars = prices[ticker]
        missing = [c for c in ("date", "open", "close", "adj_close") if c not in bars.columns]
        if missing:
            raise CharlieError(
                f"the prices of {ticker} have no {', '.join(missing)} column, which the forward "
                "returns need."
            )
        dates = list(out["as_of_date"].iloc[pos])
        for h, values in forward_returns(bars, dates, forward_windows).items():
            returns[h][pos] = values
        for h, values in executable_returns(bars, dates, forward_windows, price_basis).items():
            executable[h][pos] = values
        momentum[pos] = momentum_sign(bars, dates)
    for h in forward_windows:
        out[f"fwd_ret_{h}"] = returns[h]
    for h in forward_windows:
        out[f"exec_ret_{h}"] = executable[h]
    return out, momentum


def compute_metrics(
    cfg: EvalConfig,
    frame: pd.DataFrame,
    momentum: np.ndarray,
    train_labels: Sequence[str],
    generation: Mapping[str, Any] | None = None,
    strategy: BacktestConfig | None = None,
) -> dict[str, Any]:
    """Every metric of the report, as a JSON-ready dict (``eval_metrics.json``'s content).

    Args:
        cfg: The windows, the split's name, the bootstrap's size, block length and seed, the
            number of permutations, the strategy's config file.
        frame: The per-sample frame with its forward returns (:func:`attach_forward_returns`).
        momentum: The momentum sign per row, for the momentum baseline.
        train_labels: The training split's actions, for the majority baseline (empty: the
            evaluated rows' own labels).
        generation: How the rows were generated (the budget, its source, prompts trimmed,
            stop tokens), recorded as ``generation``.
        strategy: The backtest config whose units the trades hold (default: loaded from
            ``cfg.strategy_config``).

    Raises:
        CharlieError: ``frame`` lacks a window's return column.
        ConfigError: The strategy config is missing or invalid.
    """
    truth, pred = list(frame["true_action"]), list(frame["pred_action"])
    windows = cfg.forward_windows
    missing = [c for h in windows for c in (f"fwd_ret_{h}", f"exec_ret_{h}") if c not in frame]
    if missing:
        raise CharlieError(
            f"the per-sample frame has no {', '.join(missing)} column (attach_forward_returns "
            "adds them)."
        )
    if strategy is None:
        strategy = load_strategy(cfg.strategy_config)
    units = row_units(strategy)
    fwd, exe, measures = m.window_returns(frame, windows, units)
    truncated = (
        [bool(t) for t in frame["truncated"]] if "truncated" in frame else [False] * len(frame)
    )
    strategies = m.baselines(truth, pred, list(train_labels) or truth, momentum)
    block = u.effective_block_length(cfg.block_length, windows)
    edge = u.assess(truth, strategies, measures, list(frame["as_of_date"]),
                    list(frame["ticker"]), truncated, candidates=m.naive(strategies),
                    block_length=block, samples=cfg.bootstrap_samples,
                    permutations=cfg.permutations, seed=cfg.seed)  # fmt: skip
    compare = {}
    for name, actions in strategies.items():
        ci = edge["intervals"][name]
        compare[name] = {
            "accuracy": float(np.mean([a == t for a, t in zip(actions, truth, strict=True)])),
            "accuracy_ci95": ci["accuracy"],
        }
        for h in windows:
            for key in (f"mean_trade_return_{h}d", f"mean_row_return_{h}d"):
                value = edge["point"][name][key]
                compare[name][key] = value if np.isfinite(value) else None
                compare[name][f"{key}_ci95"] = ci[key]
            compare[name][f"mean_signed_return_{h}d"] = m.mean_signed(actions, fwd[h])
            compare[name][f"mean_signed_return_{h}d_ci95"] = ci[f"mean_signed_return_{h}d"]
    # random actions at the model's frequencies: the within-ticker shuffle null, not one draw
    shuffle = edge["null"]["shuffle_within_ticker"]
    compare[RANDOM] = {"accuracy": shuffle["accuracy"]["null_mean"],
                       "accuracy_ci95": shuffle["accuracy"]["null_ci95"],
                       "interval": "central 95% of the within-ticker shuffle null"}  # fmt: skip
    for key in measures:
        compare[RANDOM][key] = shuffle[key]["null_mean"]
        compare[RANDOM][f"{key}_ci95"] = shuffle[key]["null_ci95"]
    financial = m.financial(pred, fwd, exe, units)
    for h in windows:
        ci = edge["intervals"]["model"]
        for key in ("mean_trade_return", "mean_row_return", "mean_signed_return"):
            financial[f"{h}d"][f"{key}_ci95"] = ci[f"{key}_{h}d"]
    return {
        "split": cfg.split,
        "rows": len(frame),
        "generation": dict(generation or {}),
        "strategy": {
            "config": str(cfg.strategy_config),
            "allow_shorts": strategy.allow_shorts,
            "units": units,
            "hold": "0 units per row (the backtest keeps the previous target)",
            "price_basis": strategy.price_basis,
            "return": (
                "executable: close(t+h) / open(t+1) - 1 (raw prices, as the backtest)"
                if strategy.price_basis == "raw"
                else "executable: adj_close(t+h) / adj_open(t+1) - 1"
            ),
        },
        "classification": m.classification(truth, pred, truncated),
        "financial": financial,
        "baselines": compare,
        "bootstrap": edge["bootstrap"],
        "null": edge["null"],
        "paired": edge["paired"],
        "conventions": conventions(block, f"{cfg.strategy_config}: {describe(strategy)}"),
    }


def headline(info: dict[str, Any]) -> dict[str, Any]:
    """The numbers runs are compared on: classification, trading per window, baselines' accuracy,
    the block length, the nulls' p-values and the paired tests' differences (None where a
    statistic is undefined; the KFP metrics keep the finite numbers)."""
    c = info["classification"]
    out: dict[str, Any] = {
        k: c[k] for k in ("n", "accuracy", "macro_f1", "parse_rate", "unparseable", "truncated")
    }
    for k in ("max_new_tokens", "prompts_trimmed"):
        if k in info.get("generation", {}):
            out[k] = info["generation"][k]
    keys = ("hit_rate", "mean_signed_return", "sharpe_like", "trades", "trade_hit_rate",
            "mean_trade_return", "sharpe_like_trade", "mean_row_return", "sharpe_like_row",
            "mean_trade_return_close_to_close", "mean_row_return_close_to_close")  # fmt: skip
    for h, window in info["financial"].items():
        out.update({f"{k}_{h}": window[k] for k in keys if k in window})
    for name, baseline in info["baselines"].items():
        if name != "model":
            slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
            out[f"baseline_{slug}_accuracy"] = baseline["accuracy"]
    if "bootstrap" in info:
        out["block_length"] = info["bootstrap"]["block_length"]
    for scheme, short in (("shuffle_within_ticker", "shuffle"), ("rotate_within_ticker", "rotate")):
        for key, stat in info.get("null", {}).get(scheme, {}).items():
            out[f"p_{short}_{key}"] = stat["p_value"]
    for key, test in info.get("paired", {}).items():
        out[f"paired_{key}_difference"] = test["difference"]
        if len(test["difference_ci95"]) == 2:
            out[f"paired_{key}_difference_ci95_lo"] = test["difference_ci95"][0]
            out[f"paired_{key}_difference_ci95_hi"] = test["difference_ci95"][1]
        if "mcnemar_p" in test:
            out[f"paired_{key}_mcnemar_p"] = test["mcnemar_p"]
    return out


def parse_gate(info: Mapping[str, Any], min_parse_rate: float, generations: Any) -> str | None:
    """The one sentence when the parse rate is below ``min_parse_rate``, else None.

    Args:
        info: The metrics (:func:`compute_metrics`).
        min_parse_rate: The eval config's gate.
        generations: Where the generations were written (named in the sentence).
    """
    c = info["classification"]
    if c["parse_rate"] >= min_parse_rate:
        return None
    budget = info.get("generation", {}).get("max_new_tokens")
    at = f" at max_new_tokens {budget}" if budget is not None else ""
    return (
        f"parse rate {c['parse_rate']:.3f} is below min_parse_rate {min_parse_rate:g}: "
        f"{c['unparseable']:,} of {c['n']:,} rows have no action "
        f"({c['truncated']:,} truncated{at}); see {generations}"
    )
