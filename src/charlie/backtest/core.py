"""The backtest itself: a :class:`~charlie.backtest.panel.Panel` simulated, named and measured.

:func:`run_backtest` is the pure core (frames in, a :class:`BacktestResult` out): the
strategy and the equal-weight buy-and-hold benchmark through ``charlie.backtest.engine``,
their daily tables and trades, the metrics (``charlie.backtest.metrics``), the cost
sensitivity, per-ticker P&L, and every convention in words (:func:`conventions`).
:func:`headline` picks the numbers runs are compared on. Writing it all is
``charlie.backtest.report``'s job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from charlie import UNPARSEABLE
from charlie.backtest import engine, metrics
from charlie.backtest.config import BacktestConfig
from charlie.backtest.panel import LABELS, Panel, build_panel
from charlie.errors import CharlieError

DAILY_COLUMNS = (
    "date", "equity", "returns", "cash", "gross_exposure", "net_exposure", "turnover", "costs"
)  # fmt: skip
HEADLINE = ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "turnover", "n_trades")
"""The metrics :func:`headline` reports for the strategy and the benchmark."""


@dataclass
class BacktestResult:
    """Everything :func:`charlie.backtest.report.write_outputs` writes."""

    daily: pd.DataFrame
    benchmark_daily: pd.DataFrame
    trades: pd.DataFrame
    metrics: dict[str, Any]
    initial_cash: float
    start_date: pd.Timestamp
    """The first decision's trading day: equity is ``initial_cash`` at its close."""


def run_backtest(
    predictions: pd.DataFrame,
    frames: dict[str, pd.DataFrame],
    config: BacktestConfig,
    *,
    forced: bool = False,
) -> BacktestResult:
    """Simulate the predictions and the equal-weight buy-and-hold benchmark, with metrics.

    Args:
        predictions: From :func:`charlie.backtest.panel.prepare_predictions`.
        frames: Price frames per ticker (DESIGN.md columns), e.g. ``load_all_prices().frames``.
        config: Costs, sizing and the action mapping.
        forced: The predictions failed the parse-rate gate and ``--force`` ran them anyway
            (recorded as ``inputs.forced`` and shown on the report).

    Raises:
        CharlieError: A ticker has no prices, or no trading day follows the first decision.
    """
    panel = build_panel(predictions, frames, config)
    if len(panel.dates) < 2:
        raise CharlieError(
            f"the prices have no trading day after {panel.dates[-1]:%Y-%m-%d}, so no "
            "decision can be filled; fetch prices past the last as_of_date."
        )
    n_tickers = len(panel.tickers)
    weights = engine.hold_forward(panel.decisions) * engine.unit_weight(
        config.position_sizing,
        n_tickers,
        fixed_pct_value=config.fixed_pct_value,
        max_units=config.max_units(),
    )

    def strategy(commission_bps: float, slippage_bps: float) -> engine.Simulation:
        return engine.simulate(
            panel.open, panel.close, weights, initial_cash=config.initial_cash,
            commission_bps=commission_bps, slippage_bps=slippage_bps,
        )  # fmt: skip

    bench_weights = np.full(weights.shape, 1.0 / n_tickers)
    bench_mask = engine.first_fill_mask(panel.open, panel.close)

    def benchmark(commission_bps: float, slippage_bps: float) -> engine.Simulation:
        return engine.simulate(
            panel.open, panel.close, bench_weights, initial_cash=config.initial_cash,
            commission_bps=commission_bps, slippage_bps=slippage_bps, rebalance=bench_mask,
        )  # fmt: skip

    costs = (config.transaction_cost_bps, config.slippage_bps)
    sim, bench = strategy(*costs), benchmark(*costs)
    daily, bench_daily = daily_frame(panel.dates, sim), daily_frame(panel.dates, bench)
    rf = config.risk_free_per_period
    result_metrics: dict[str, Any] = {
        "strategy": _summary(daily, sim, rf),
        "benchmark": _summary(bench_daily, bench, rf),
    }
    result_metrics["strategy_minus_benchmark"] = {
        k: result_metrics["strategy"][k] - result_metrics["benchmark"][k]
        for k in ("total_return", "cagr", "sharpe", "max_drawdown")
    }
    result_metrics["costs"] = {
        name: {
            "commission": float(s.commission.sum()),
            "slippage": float(s.slippage.sum()),
            "total": float(s.costs.sum()),
            "traded_notional": float(s.notional.sum()),
        }
        for name, s in (("strategy", sim), ("benchmark", bench))
    }

    runs = {costs: (sim, bench)}
    table = []
    for key in [(0.0, 0.0)] + [
        (float(b), config.slippage_bps) for b in config.cost_sensitivity_bps
    ]:
        if key not in runs:
            runs[key] = (strategy(*key), benchmark(*key))
        table.append(_cost_row(panel.dates, key, *runs[key], rf))
    result_metrics["cost_sensitivity"] = table
    result_metrics["per_ticker"] = _per_ticker(panel, sim)
    result_metrics["inputs"] = {**_inputs(predictions, panel), "forced": forced}
    result_metrics["conventions"] = conventions(config, n_tickers)
    result_metrics["config"] = config.model_dump(mode="json")
    return BacktestResult(
        daily=daily,
        benchmark_daily=bench_daily,
        trades=trades_frame(panel, sim, weights),
        metrics=result_metrics,
        initial_cash=config.initial_cash,
        start_date=panel.dates[0],
    )


def _cost_row(
    dates: pd.DatetimeIndex,
    key: tuple[float, float],
    sim: engine.Simulation,
    bench: engine.Simulation,
    rf: float,
) -> dict[str, float]:
    s_ret, b_ret = daily_frame(dates, sim)["returns"], daily_frame(dates, bench)["returns"]
    return {
        "commission_bps": key[0],
        "slippage_bps": key[1],
        "strategy_total_return": metrics.total_return(s_ret),
        "strategy_cagr": metrics.cagr(s_ret),
        "strategy_sharpe": metrics.sharpe_ratio(s_ret, rf),
        "strategy_costs": float(sim.costs.sum()),
        "benchmark_total_return": metrics.total_return(b_ret),
        "benchmark_sharpe": metrics.sharpe_ratio(b_ret, rf),
        "excess_total_return": metrics.total_return(s_ret) - metrics.total_return(b_ret),
    }


def daily_frame(dates: pd.DatetimeIndex, sim: engine.Simulation) -> pd.DataFrame:
    """The daily CSV: one row per trading day after the first decision's day.

    ``returns`` is the day's change of equity (close to close; the first against
    ``initial_cash``); ``turnover`` is traded notional over the previous close's equity.
    """
    gross, net = engine.exposures(sim)
    prev, now = sim.equity[:-1], sim.equity[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = np.where(prev > 0, np.maximum(now / prev - 1.0, -1.0), 0.0)
    return pd.DataFrame(
        {
            "date": dates[1:].strftime("%Y-%m-%d"),
            "equity": now,
            "returns": returns,
            "cash": sim.cash[1:],
            "gross_exposure": gross[1:],
            "net_exposure": net[1:],
            "turnover": engine.daily_turnover(sim)[1:],
            "costs": sim.costs[1:],
        },
        columns=list(DAILY_COLUMNS),
    )


def trades_frame(panel: Panel, sim: engine.Simulation, weights: np.ndarray) -> pd.DataFrame:
    """One row per fill, by date then ticker."""
    rows, cols = np.nonzero(sim.traded)
    shares = sim.traded[rows, cols]
    fill = sim.fill_price[rows, cols]
    labels = np.array([*LABELS, ""], dtype=object)  # code -1 (none) -> ""
    return pd.DataFrame(
        {
            "date": panel.dates[rows].strftime("%Y-%m-%d"),
            "target_as_of": panel.dates[rows - 1].strftime("%Y-%m-%d"),
            "ticker": np.asarray(panel.tickers, dtype=object)[cols],
            "action": labels[panel.actions[rows - 1, cols]],
            "side": np.where(shares > 0, "BUY", "SELL"),
            "shares": shares,
            "reference_price": sim.reference_price[rows, cols],
            "price_source": np.where(np.isnan(panel.open[rows, cols]), "close", "open"),
            "fill_price": fill,
            "notional": np.abs(shares) * fill,
            "commission": sim.commission[rows, cols],
            "slippage": sim.slippage[rows, cols],
            "target_weight": weights[rows - 1, cols],
            "position_after": sim.positions[rows, cols],
        }
    )


def _summary(daily: pd.DataFrame, sim: engine.Simulation, rf: float) -> dict[str, Any]:
    return metrics.summary(
        daily["returns"],
        turnover=daily["turnover"],
        gross_exposure=daily["gross_exposure"],
        n_trades=int(np.count_nonzero(sim.traded)),
        risk_free=rf,
    )


def _per_ticker(panel: Panel, sim: engine.Simulation) -> list[dict[str, Any]]:
    # P&L = what the position is worth at the end minus what was paid for it, costs included.
    flows = -(sim.traded * np.nan_to_num(sim.fill_price)) - sim.commission
    pnl = sim.positions[-1] * sim.mark[-1] + flows.sum(axis=0)
    predicted = (panel.actions >= 0).sum(axis=0)
    return [
        {
            "ticker": ticker,
            "predictions": int(predicted[i]),
            "trades": int(np.count_nonzero(sim.traded[:, i])),
            "traded_notional": float(sim.notional[:, i].sum()),
            "costs": float(sim.commission[:, i].sum() + sim.slippage[:, i].sum()),
            "pnl": float(pnl[i]),
            "final_weight": float(sim.positions[-1, i] * sim.mark[-1, i] / sim.equity[-1])
            if sim.equity[-1] > 0
            else math.nan,
        }
        for i, ticker in enumerate(panel.tickers)
    ]


def _inputs(predictions: pd.DataFrame, panel: Panel) -> dict[str, Any]:
    counts = predictions["pred_action"].value_counts()
    last_decision = predictions["as_of_date"].max()
    return {
        "predictions": len(predictions),
        "by_action": {a: int(counts.get(a, 0)) for a in LABELS},
        "unparseable": int(counts.get(UNPARSEABLE, 0)),
        "parse_rate": 1.0 - int(counts.get(UNPARSEABLE, 0)) / len(predictions),
        "tickers": list(panel.tickers),
        "first_decision": f"{predictions['as_of_date'].min():%Y-%m-%d}",
        "last_decision": f"{last_decision:%Y-%m-%d}",
        "first_day": f"{panel.dates[1]:%Y-%m-%d}",
        "last_day": f"{panel.dates[-1]:%Y-%m-%d}",
        "days": len(panel.dates) - 1,
        "last_decision_filled": bool(panel.dates[-1] > last_decision),
        "missing_prices": int(np.isnan(panel.close[1:]).sum()),
    }


def conventions(config: BacktestConfig, n_tickers: int) -> dict[str, str]:
    """Every convention behind the numbers, one sentence each (in the JSON and the report)."""
    unit = engine.unit_weight(
        config.position_sizing, n_tickers, fixed_pct_value=config.fixed_pct_value,
        max_units=config.max_units(),
    )  # fmt: skip
    units = ", ".join(
        f"{a} {'keeps the current target' if u is None else f'{u:g} unit' + 's' * (u != 1)}"
        for a, u in config.units().items()
    )
    sizing = (
        f"fixed_pct: one unit is {config.fixed_pct_value:.2%} of current equity per ticker"
        if config.position_sizing == "fixed_pct"
        else f"equal_weight: one unit is equity / ({n_tickers} tickers x "
        f"{config.max_units():g} max units) = {unit:.4%}, so a book where every ticker holds "
        "the most units is fully invested"
    )
    return {
        "timing": "A prediction for as_of_date is decided after that day's close and filled at "
        "the next trading day's open (at its close when it has no open); a prediction dated on "
        "a day without bars counts at the previous trading day's close.",
        "missing_prices": "No fill on a day without a price for that ticker: the position stays "
        "and is traded on its next day with a price, toward the latest target; it is marked at "
        "the last known price meanwhile.",
        "actions": f"{units}; UNPARSEABLE is traded like HOLD; a ticker-day without a prediction "
        "keeps the current target; everyone starts flat."
        + ("" if config.allow_shorts else " Shorts are off, so negative units are flat."),
        "sizing": f"Target weight = units x unit size; {sizing}.",
        "rebalancing": "Every ticker is rebalanced daily toward its target weight: target "
        "shares = weight x equity at the fill (positions valued at that day's fill prices) / "
        "fill reference price; fractional shares; trades under 1e-12 of equity are skipped.",
        "slippage": f"Fill price = reference x (1 + {config.slippage_bps:g} bps) for buys and x "
        f"(1 - {config.slippage_bps:g} bps) for sells.",
        "commission": f"{config.transaction_cost_bps:g} bps of |shares x fill price| per fill; "
        "costs = commission + |shares| x |fill price - reference price|.",
        "marking": "Positions are marked at the close (the day's open when it has no close, "
        "else the last known price); equity = cash + positions.",
        "cash": "Cash earns nothing; it may go negative (borrowed at 0 %), e.g. when costs "
        "exceed the cash of a fully invested book; short-sale proceeds go to cash, no borrow "
        "fee; a book whose equity falls to 0 only closes positions.",
        "prices": "Split- and dividend-adjusted: open and close scaled by adj_close / close, so "
        "dividends are reinvested in the price."
        if config.price_basis == "adjusted"
        else "Raw traded prices: dividends are not counted.",
        "period": "Daily rows run from the first trading day after the first decision to the "
        "first trading day after the last one (where it is filled); returns are close-to-close "
        "changes of equity, the first one against initial_cash.",
        "benchmark": "Equal-weight buy-and-hold of the same tickers under the same costs: each "
        f"ticker bought once with 1/{n_tickers} of equity at its first fill after the first "
        "decision (later listings when they list), then held without rebalancing.",
        "metrics": f"empyrical's conventions: {metrics.PERIODS} periods a year; sample standard "
        f"deviation (ddof=1); risk-free {config.risk_free_per_period:g} per period; downside "
        "deviation over all observations; drawdown measured from initial equity; CAGR = "
        f"prod(1 + r) ^ ({metrics.PERIODS} / n) - 1.",
        "undefined": "Sharpe and Sortino are NaN (null in JSON) with fewer than 2 days or "
        "zero-variance returns; Sortino also without a return below 0; Calmar without a "
        "drawdown; every metric of an empty period.",
        "turnover_exposure": "turnover = mean daily traded notional (buys + sells) / previous "
        f"equity x {metrics.PERIODS}; exposure = mean daily gross exposure (sum |position "
        "value| / equity); n_trades counts fills.",
        "cost_sensitivity": "The strategy and benchmark rerun at each commission with the "
        "configured slippage; the first row has no commission and no slippage.",
    }


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers runs are compared on: strategy and benchmark risk/return, and costs paid."""
    return {
        **{side: {k: metrics[side][k] for k in HEADLINE} for side in ("strategy", "benchmark")},
        "costs_paid": metrics["costs"]["strategy"]["total"],
    }
