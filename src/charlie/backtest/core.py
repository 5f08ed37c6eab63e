"""The backtest itself: a :class:`~charlie.backtest.panel.Panel` simulated, named and measured.

:func:`run_backtest` is the pure core (frames in, a :class:`BacktestResult` out): the
strategy (traded inside the config's ``rebalance_band``) and the equal-weight buy-and-hold
benchmark through ``charlie.backtest.engine``, their daily tables and trades, the metrics
(``charlie.backtest.metrics``), the exposure-matched benchmark (:func:`exposure_matched`) and
the strategy against both benchmarks (beta, alpha, information ratio), the Sharpe ratio's
interval, PSR and deflated Sharpe over the cost-sensitivity trials, the cost sensitivity,
per-ticker P&L, and every convention in words (:func:`conventions`).
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
HEADLINE_MATCHED = ("total_return", "sharpe", "max_drawdown", "exposure")
"""The exposure-matched benchmark's metrics in :func:`headline`."""
HEADLINE_RELATIVE = ("total_return", "beta", "alpha", "alpha_t", "information_ratio")
"""The strategy against the exposure-matched benchmark, in :func:`headline`."""
HEADLINE_SHARPE = (
    "standard_error", "ci_low", "ci_high", "probabilistic_sharpe_vs_benchmark", "n_trials",
    "expected_max_sharpe", "deflated_sharpe",
)  # fmt: skip
"""The strategy's Sharpe inference in :func:`headline`."""


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
            rebalance_band=config.rebalance_band,
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
    s_ret, b_ret = daily["returns"].to_numpy(), bench_daily["returns"].to_numpy()
    m_ret = exposure_matched(daily, bench_daily)
    matched = metrics.summary(
        m_ret,
        gross_exposure=np.nan_to_num(daily["gross_exposure"]) * bench_daily["gross_exposure"],
        risk_free=rf,
    )
    matched["turnover"] = matched["n_trades"] = math.nan  # a scaled series: nothing is traded
    result_metrics: dict[str, Any] = {
        "strategy": _summary(daily, sim, rf),
        "benchmark": _summary(bench_daily, bench, rf),
        "benchmark_exposure_matched": matched,
    }
    result_metrics["strategy_minus_benchmark"] = _versus(
        result_metrics["strategy"], result_metrics["benchmark"]
    )  # the seed's key: the same numbers as versus_full_benchmark's differences
    result_metrics["versus_full_benchmark"] = {
        **_versus(result_metrics["strategy"], result_metrics["benchmark"]),
        **metrics.relative(s_ret, b_ret, rf),
    }
    result_metrics["versus_exposure_matched_benchmark"] = {
        **_versus(result_metrics["strategy"], matched),
        **metrics.relative(s_ret, m_ret, rf),
    }
    wiped = [
        name for name, r in (("strategy", s_ret), ("benchmark", b_ret)) if metrics.wiped_out(r)
    ]
    result_metrics["wiped_out"] = {
        "strategy": "strategy" in wiped,
        "benchmark": "benchmark" in wiped,
        "note": (
            f"The {' and the '.join(wiped)} lost all equity: a terminal state; Sharpe and "
            "Sortino are not reported (null), and the book only exits its positions."
            if wiped
            else "Equity stayed above zero throughout."
        ),
    }
    n_days = len(daily)
    result_metrics["annualisation"] = {
        "annualised": metrics.annualised(n_days),
        "days": n_days,
        "min_days": metrics.PERIODS,
        "note": (
            "CAGR and Calmar cover at least a year of returns."
            if metrics.annualised(n_days)
            else f"CAGR and Calmar are null: {n_days} days is under a year "
            f"({metrics.PERIODS} days), and compounding it to one would extrapolate."
        )
        + " Volatility, Sharpe and Sortino are annualised rates (mean x 252, standard "
        "deviation x sqrt(252)), reported for any length.",
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
    trial_sharpes = [
        metrics.sharpe_ratio(daily_frame(panel.dates, s)["returns"], rf) for s, _ in runs.values()
    ]
    result_metrics["sharpe_inference"] = {
        "strategy": metrics.sharpe_inference(
            s_ret,
            benchmark_sharpe=result_metrics["benchmark"]["sharpe"],
            trial_sharpes=trial_sharpes,
            risk_free=rf,
            confidence=config.sharpe_confidence,
        ),
        "benchmark": metrics.sharpe_inference(
            b_ret, risk_free=rf, confidence=config.sharpe_confidence
        ),
        "trials": [
            {"commission_bps": key[0], "slippage_bps": key[1], "sharpe": sharpe}
            for key, sharpe in zip(runs, trial_sharpes, strict=True)
        ],
    }
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
    daily, bench_daily = daily_frame(dates, sim), daily_frame(dates, bench)
    s_ret, b_ret = daily["returns"], bench_daily["returns"]
    s_total, b_total = metrics.total_return(s_ret), metrics.total_return(b_ret)
    m_total = metrics.total_return(exposure_matched(daily, bench_daily))
    return {
        "commission_bps": key[0],
        "slippage_bps": key[1],
        "strategy_total_return": s_total,
        "strategy_cagr": metrics.cagr(s_ret) if metrics.annualised(len(s_ret)) else math.nan,
        "strategy_sharpe": metrics.sharpe_ratio(s_ret, rf),
        "strategy_costs": float(sim.costs.sum()),
        "benchmark_total_return": b_total,
        "benchmark_sharpe": metrics.sharpe_ratio(b_ret, rf),
        "exposure_matched_total_return": m_total,
        "versus_exposure_matched_total_return": s_total - m_total,
        "versus_full_benchmark_total_return": s_total - b_total,
        "excess_total_return": s_total - b_total,  # the seed's key, = versus_full_benchmark_...
    }


def exposure_matched(daily: pd.DataFrame, benchmark_daily: pd.DataFrame) -> np.ndarray:
    """The benchmark scaled to the strategy's exposure: each day's benchmark return x the
    strategy's gross exposure at that day's close (0 where undefined), the rest in cash at 0.
    """
    exposure = np.nan_to_num(daily["gross_exposure"].to_numpy(dtype=np.float64))
    return np.clip(exposure * benchmark_daily["returns"].to_numpy(dtype=np.float64), -1.0, None)


def _versus(strategy: dict[str, Any], benchmark: dict[str, Any]) -> dict[str, float]:
    return {
        k: strategy[k] - benchmark[k] for k in ("total_return", "cagr", "sharpe", "max_drawdown")
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
        "dropped_predictions": {
            "isolated_dates": int(predictions.attrs.get("isolated", 0)),
            "before_first_bar": panel.before_prices,
        },
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
    band = config.rebalance_band
    trade = (
        "target shares = weight x equity at the fill (positions valued at that day's fill "
        "prices) / fill reference price; fractional shares; trades under 1e-12 of equity are "
        "skipped"
    )
    if band is None:
        rebalancing = f"Every ticker is rebalanced daily toward its target weight: {trade}."
    else:
        example = (
            f", e.g. a 4 % target is left alone within {0.04 * (1 - band):.2%}.."
            f"{0.04 * (1 + band):.2%}"
            if band > 0
            else "; 0 trades any drift"
        )
        rebalancing = (
            f"rebalance_band {band:g}: a ticker is traded when its target weight changes "
            "(retried until it has a price) or when its weight at the fill has drifted from "
            f"the target by more than {band:g} x |target| (relative drift{example}); "
            "otherwise the position drifts with prices, so HOLD keeps the shares. A trade: "
            f"{trade}."
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
        "rebalancing": rebalancing,
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
        "exposure_matched_benchmark": "The benchmark scaled to the strategy's exposure: each "
        "day's benchmark return x the strategy's gross exposure at that day's close (daily, "
        "not the mean exposure), the rest in cash at 0 %; a scaled series, so it has no "
        "trades, turnover or costs of its own. Strategy-minus-benchmark differences are "
        "against it (versus_exposure_matched_benchmark); those against the fully invested "
        "benchmark are kept as versus_full_benchmark (strategy_minus_benchmark, "
        "excess_total_return).",
        "relative": "beta and alpha from OLS of the strategy's daily excess returns on the "
        f"benchmark's; alpha = intercept x {metrics.PERIODS} (arithmetic), alpha_t = intercept "
        "/ its OLS standard error; tracking error = std(strategy - benchmark) x "
        f"sqrt({metrics.PERIODS}); information ratio = mean(strategy - benchmark) x "
        f"{metrics.PERIODS} / tracking error.",
        "metrics": f"empyrical's conventions: {metrics.PERIODS} periods a year; sample standard "
        f"deviation (ddof=1); risk-free {config.risk_free_per_period:g} per period; downside "
        "deviation over all observations; drawdown measured from initial equity; CAGR = "
        f"prod(1 + r) ^ ({metrics.PERIODS} / n) - 1, reported only for a period of at least "
        f"{metrics.PERIODS} days (so is Calmar); volatility, Sharpe and Sortino are annualised "
        f"rates (mean x {metrics.PERIODS}, std x sqrt({metrics.PERIODS})) at any length.",
        "sharpe_inference": "Computed on the per-period Sharpe SR, the returns' skewness g3 and "
        "kurtosis g4 (population moments, normal = 3): standard error sqrt((1 - g3 SR + (g4 - "
        f"1) / 4 SR^2) / (n - 1)) (Mertens 2002), annualised x sqrt({metrics.PERIODS}); a "
        f"normal {config.sharpe_confidence:.0%} interval; the probabilistic Sharpe ratio "
        "PSR = Phi((SR - SR*) sqrt(n - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2)) with SR* the "
        "full benchmark's Sharpe (Bailey & Lopez de Prado 2012); the deflated Sharpe ratio is "
        "the PSR with SR* the expected maximum Sharpe of the trials (the configured costs and "
        "every distinct cost-sensitivity rerun, n_trials in all) given the variance of their "
        "Sharpe ratios (Bailey & Lopez de Prado 2014), null with one trial.",
        "undefined": "Sharpe and Sortino are NaN (null in JSON) with fewer than 2 days or "
        "zero-variance returns; Sortino also without a return below 0; Calmar without a "
        f"drawdown; CAGR and Calmar for a period under {metrics.PERIODS} days (the report says "
        "n/a (under a year)); alpha_t and the information ratio without variation; every "
        "metric of an empty period.",
        "turnover_exposure": "turnover = mean daily traded notional (buys + sells) / previous "
        f"equity x {metrics.PERIODS}; exposure = mean daily gross exposure (sum |position "
        "value| / equity); n_trades counts fills.",
        "cost_sensitivity": "The strategy and benchmark rerun at each commission with the "
        "configured slippage; the first row has no commission and no slippage.",
    }


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers runs are compared on: strategy and benchmark risk/return, and costs paid.

    Also the exposure-matched benchmark, the strategy against it (``versus_matched``) and the
    strategy's Sharpe inference (``sharpe``: interval, PSR, trials, DSR); NaN stays NaN, for
    the KFP publisher to drop.
    """
    versus = metrics["versus_exposure_matched_benchmark"]
    inference = metrics["sharpe_inference"]["strategy"]
    return {
        **{side: {k: metrics[side][k] for k in HEADLINE} for side in ("strategy", "benchmark")},
        "costs_paid": metrics["costs"]["strategy"]["total"],
        "matched": {k: metrics["benchmark_exposure_matched"][k] for k in HEADLINE_MATCHED},
        "versus_matched": {k: versus[k] for k in HEADLINE_RELATIVE},
        "sharpe": {k: inference[k] for k in HEADLINE_SHARPE},
    }
