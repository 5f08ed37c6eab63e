"""The pandas and report layer over the engine: predictions and prices in; daily, trades,
metrics, cost sensitivity, plots and one self-contained HTML report out.

:func:`run_backtest` is the pure core (frames in, a :class:`BacktestResult` out);
:func:`write_outputs` writes every file atomically next to ``--out``. The engine
(``charlie.backtest.engine``) never sees a date or a ticker: this module builds its
date x ticker arrays and names its results.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from charlie import ACTIONS
from charlie.backtest import engine, metrics
from charlie.backtest.config import BacktestConfig
from charlie.errors import CharlieError

UNPARSEABLE = "UNPARSEABLE"
"""A prediction the model wrote without a readable action: traded like HOLD, and counted."""
REQUIRED_COLUMNS = ("ticker", "as_of_date", "pred_action")
DAILY_COLUMNS = (
    "date", "equity", "returns", "cash", "gross_exposure", "net_exposure", "turnover", "costs"
)  # fmt: skip
LOOKBACK_DAYS = 7
"""Calendar days of bars fetched before the first decision (it may fall on a holiday)."""
FILL_MARGIN_DAYS = 10
"""Calendar days of bars fetched after the last decision, for its next-open fill."""


# ---------------------------------------------------------------- inputs


def prepare_predictions(frame: pd.DataFrame, source: str = "the eval CSV") -> pd.DataFrame:
    """Check and normalise an eval CSV's predictions: ticker, as_of_date, pred_action.

    Tickers and actions are stripped and upper-cased; a blank action is UNPARSEABLE.

    Raises:
        CharlieError: A required column is missing, there is no row, or a date or an
            action is not allowed (the sentence names the CSV line).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise CharlieError(
            f"{source} lacks the column(s) {', '.join(missing)}; a backtest needs "
            f"{', '.join(REQUIRED_COLUMNS)} as `charlie evaluate` writes them."
        )
    if frame.empty:
        raise CharlieError(f"{source} holds no prediction.")
    tickers = frame["ticker"].astype("string").str.strip().str.upper()
    dates = pd.to_datetime(frame["as_of_date"].astype("string"), format="%Y-%m-%d", errors="coerce")
    actions = frame["pred_action"].astype("string").str.strip().str.upper().fillna("")
    actions = actions.mask(actions == "", UNPARSEABLE)
    allowed = (*ACTIONS, UNPARSEABLE)
    for bad, what in (
        (tickers.isna() | (tickers == ""), "a ticker"),
        (dates.isna(), "an as_of_date like 2025-01-31"),
        (~actions.isin(allowed), f"a pred_action in {', '.join(allowed)}"),
    ):
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            value = frame.iloc[row][["ticker", "as_of_date", "pred_action"]].tolist()
            raise CharlieError(
                f"{source} line {row + 2} ({', '.join(map(str, value))}) lacks {what}."
            )
    return pd.DataFrame(
        {
            "ticker": tickers.astype(str).to_numpy(),
            "as_of_date": dates.to_numpy(dtype="datetime64[ns]"),
            "pred_action": actions.astype(str).to_numpy(),
        }
    )


def price_window(predictions: pd.DataFrame) -> dict[str, tuple[dt.date, dt.date]]:
    """The bars to fetch (``load_all_prices``'s ``wanted``): every ticker over the whole period.

    Every ticker needs the whole period, not just its own dates: a position is held (and
    marked) after its last prediction.
    """
    first = predictions["as_of_date"].min().date() - dt.timedelta(days=LOOKBACK_DAYS)
    last = predictions["as_of_date"].max().date() + dt.timedelta(days=FILL_MARGIN_DAYS)
    return {ticker: (first, last) for ticker in sorted(predictions["ticker"].unique())}


@dataclass(frozen=True)
class Panel:
    """The engine's inputs: date x ticker arrays over the backtest calendar.

    Row 0 is the trading day of the first decision; the last row is the first trading day
    after the last decision (where it is filled), when the prices reach it.
    """

    dates: pd.DatetimeIndex
    tickers: list[str]
    open: np.ndarray
    close: np.ndarray
    decisions: np.ndarray
    """Units decided at each row's close; NaN keeps the current target (HOLD, no prediction)."""
    actions: np.ndarray
    """Index into ``(*ACTIONS, UNPARSEABLE)`` of the prediction behind each decision; -1: none."""


def build_panel(
    predictions: pd.DataFrame, frames: dict[str, pd.DataFrame], config: BacktestConfig
) -> Panel:
    """Align predictions and price frames on one trading calendar (the union of their dates).

    A prediction dated on a day without bars counts at the close of the trading day before
    it; two predictions landing on one (row, ticker) keep the later one.
    """
    tickers = sorted(predictions["ticker"].unique())
    lacking = [t for t in tickers if t not in frames or frames[t].empty]
    if lacking:
        raise CharlieError(f"no prices for {', '.join(lacking)}; check the prices section.")
    bars = {t: _bars(frames[t], config.price_basis) for t in tickers}
    calendar = pd.DatetimeIndex(
        np.unique(np.concatenate([b.index.to_numpy() for b in bars.values()]))
    )
    first, last = predictions["as_of_date"].min(), predictions["as_of_date"].max()
    start = max(int(calendar.searchsorted(first, side="right")) - 1, 0)
    end = min(int(calendar.searchsorted(last, side="right")), len(calendar) - 1)
    dates = calendar[start : end + 1]

    open_ = np.column_stack([bars[t]["open"].reindex(dates).to_numpy() for t in tickers])
    close = np.column_stack([bars[t]["close"].reindex(dates).to_numpy() for t in tickers])

    labels = (*ACTIONS, UNPARSEABLE)
    units = config.units()
    units[UNPARSEABLE] = units["HOLD"]
    placed = predictions.assign(
        row=np.clip(dates.searchsorted(predictions["as_of_date"], side="right") - 1, 0, None),
        col=pd.Index(tickers).get_indexer(predictions["ticker"]),
    )
    placed = placed.sort_values("as_of_date", kind="stable").drop_duplicates(
        ["row", "col"], keep="last"
    )
    decisions = np.full(open_.shape, np.nan)
    actions = np.full(open_.shape, -1, dtype=np.int8)
    value = placed["pred_action"].map(lambda a: np.nan if units[a] is None else units[a])
    decisions[placed["row"], placed["col"]] = value.to_numpy(dtype=np.float64)
    actions[placed["row"], placed["col"]] = placed["pred_action"].map(labels.index).to_numpy()
    return Panel(dates, tickers, open_, close, decisions, actions)


def _bars(frame: pd.DataFrame, basis: str) -> pd.DataFrame:
    """Open and close on the chosen basis, indexed by date; unusable prices become NaN."""
    frame = frame.drop_duplicates("date", keep="last")
    open_ = frame["open"].to_numpy(dtype=np.float64)
    close = frame["close"].to_numpy(dtype=np.float64)
    if basis == "adjusted":
        adj = frame["adj_close"].to_numpy(dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            open_ = open_ * adj / close
        close = adj
    out = pd.DataFrame(
        {"open": open_, "close": close}, index=pd.DatetimeIndex(frame["date"]).normalize()
    )
    return out.where(np.isfinite(out) & (out > 0))


# ---------------------------------------------------------------- the core


@dataclass
class BacktestResult:
    """Everything :func:`write_outputs` writes."""

    daily: pd.DataFrame
    benchmark_daily: pd.DataFrame
    trades: pd.DataFrame
    metrics: dict[str, Any]
    initial_cash: float
    start_date: pd.Timestamp
    """The first decision's trading day: equity is ``initial_cash`` at its close."""


def run_backtest(
    predictions: pd.DataFrame, frames: dict[str, pd.DataFrame], config: BacktestConfig
) -> BacktestResult:
    """Simulate the predictions and the equal-weight buy-and-hold benchmark, with metrics.

    Args:
        predictions: From :func:`prepare_predictions`.
        frames: Price frames per ticker (DESIGN.md columns), e.g. ``load_all_prices().frames``.
        config: Costs, sizing and the action mapping.

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
    result_metrics["inputs"] = _inputs(predictions, panel)
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
    labels = np.array([*ACTIONS, UNPARSEABLE, ""], dtype=object)  # code -1 (none) -> ""
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
        "by_action": {a: int(counts.get(a, 0)) for a in (*ACTIONS, UNPARSEABLE)},
        "unparseable": int(counts.get(UNPARSEABLE, 0)),
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


# ---------------------------------------------------------------- outputs


HEADLINE = ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "turnover", "n_trades")


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers runs are compared on: strategy and benchmark risk/return, and costs paid."""
    return {
        **{side: {k: metrics[side][k] for k in HEADLINE} for side in ("strategy", "benchmark")},
        "costs_paid": metrics["costs"]["strategy"]["total"],
    }


def output_paths(out: Path | str) -> dict[str, Path]:
    """Every file the backtest writes, named after ``--out``'s stem, beside it."""
    out = Path(out)
    stem, parent = out.stem, out.parent
    return {
        "daily": out,
        "trades": parent / f"{stem}_trades.csv",
        "metrics": parent / f"{stem}_metrics.json",
        "equity_png": parent / f"{stem}_equity.png",
        "drawdown_png": parent / f"{stem}_drawdown.png",
        "report": parent / f"{stem}_report.html",
    }


def write_outputs(result: BacktestResult, out: Path | str) -> dict[str, Path]:
    """Write the daily CSV, trades, metrics JSON, two PNGs and the HTML report, atomically."""
    from charlie.io import atomic_outputs

    paths = output_paths(out)
    figures = render_figures(result)
    with atomic_outputs(*paths.values()) as temps:
        tmp = dict(zip(paths, temps, strict=True))
        result.daily.to_csv(tmp["daily"], index=False, float_format="%.12g")
        result.trades.to_csv(tmp["trades"], index=False, float_format="%.12g")
        tmp["metrics"].write_text(
            json.dumps(_jsonable(result.metrics), indent=2, allow_nan=False) + "\n",
            encoding="utf-8",
        )
        tmp["equity_png"].write_bytes(figures["equity"])
        tmp["drawdown_png"].write_bytes(figures["drawdown"])
        tmp["report"].write_text(render_html(result, figures, paths), encoding="utf-8")
    return paths


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _curves(result: BacktestResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dates and both equity curves, starting at initial_cash on the first decision's day."""
    dates = np.concatenate(
        [[result.start_date.to_datetime64()], pd.to_datetime(result.daily["date"]).to_numpy()]
    ).astype("datetime64[ns]")
    start = [result.initial_cash]
    strategy = np.concatenate([start, result.daily["equity"].to_numpy()])
    bench = np.concatenate([start, result.benchmark_daily["equity"].to_numpy()])
    return dates, strategy, bench


def render_figures(result: BacktestResult) -> dict[str, bytes]:
    """PNG bytes: equity against the benchmark, and both drawdowns (Agg, no pyplot state)."""
    from matplotlib.figure import Figure

    dates, strategy, bench = _curves(result)
    out: dict[str, bytes] = {}

    fig = Figure(figsize=(9, 4.2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(dates, strategy, label="strategy (predictions)", color="#1f5fa8", linewidth=1.6)
    ax.plot(dates, bench, label="benchmark (equal-weight buy & hold)", color="#888888")
    ax.axhline(result.initial_cash, color="#cccccc", linewidth=0.8, zorder=0)
    ax.set_title("Equity, after costs")
    ax.set_ylabel("equity")
    ax.yaxis.set_major_formatter(lambda y, _: f"{y:,.0f}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", frameon=False)
    fig.autofmt_xdate()
    out["equity"] = _png(fig)

    fig = Figure(figsize=(9, 3.2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for curve, label, color in ((strategy, "strategy", "#b03a2e"), (bench, "benchmark", "#888888")):
        peak = np.maximum.accumulate(curve)
        ax.fill_between(dates, curve / peak - 1.0, 0.0, alpha=0.2, color=color, linewidth=0)
        ax.plot(dates, curve / peak - 1.0, label=label, color=color, linewidth=1.0)
    ax.set_title("Drawdown from the running peak (initial equity included)")
    ax.yaxis.set_major_formatter(lambda y, _: f"{y:.1%}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", frameon=False)
    fig.autofmt_xdate()
    out["drawdown"] = _png(fig)
    return out


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


_FORMATS = {
    "total_return": "pct", "cagr": "pct", "annual_volatility": "pct", "sharpe": "num",
    "sortino": "num", "max_drawdown": "pct", "calmar": "num", "turnover": "x",
    "n_trades": "int", "exposure": "pct",
}  # fmt: skip


def _fmt(value: Any, kind: str = "num") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return '<span class="na" title="undefined: see the conventions">n/a</span>'
    if kind == "pct":
        return f"{value:.2%}"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "money":
        return f"{value:,.2f}"
    return f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:960px;padding:0 1rem;color:#222}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;
border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0;font-variant-numeric:tabular-nums}
th,td{padding:.25rem .7rem;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f6f6f6}
img{max-width:100%;height:auto}.muted{color:#666}.na{color:#999}
dt{font-weight:600;margin-top:.5rem}dd{margin-left:1rem}
"""


def render_html(result: BacktestResult, figures: dict[str, bytes], paths: dict[str, Path]) -> str:
    """One self-contained page: the PNGs are embedded, nothing is fetched."""
    m = result.metrics
    strat, bench, inputs = m["strategy"], m["benchmark"], m["inputs"]
    metric_rows = [
        [
            html.escape(name),
            _fmt(strat[name], _FORMATS[name]),
            _fmt(bench[name], _FORMATS[name]),
            _fmt(strat[name] - bench[name], _FORMATS[name]) if name != "n_trades" else "",
        ]
        for name in metrics.METRIC_NAMES
    ]
    cost_rows = [
        [
            f"{r['commission_bps']:g} + {r['slippage_bps']:g}",
            _fmt(r["strategy_total_return"], "pct"),
            _fmt(r["strategy_cagr"], "pct"),
            _fmt(r["strategy_sharpe"]),
            _fmt(r["strategy_costs"], "money"),
            _fmt(r["benchmark_total_return"], "pct"),
            _fmt(r["benchmark_sharpe"]),
            _fmt(r["excess_total_return"], "pct"),
        ]
        for r in m["cost_sensitivity"]
    ]
    ticker_rows = [
        [
            html.escape(t["ticker"]),
            _fmt(t["predictions"], "int"),
            _fmt(t["trades"], "int"),
            _fmt(t["traded_notional"], "money"),
            _fmt(t["costs"], "money"),
            _fmt(t["pnl"], "money"),
            _fmt(t["final_weight"], "pct"),
        ]
        for t in m["per_ticker"]
    ]
    actions = ", ".join(f"{a} {n:,}" for a, n in inputs["by_action"].items())
    cfg = m["config"]
    conventions_html = "".join(
        f"<dt>{html.escape(k.replace('_', ' '))}</dt><dd>{html.escape(v)}</dd>"
        for k, v in m["conventions"].items()
    )
    images = {
        k: "data:image/png;base64," + base64.b64encode(v).decode("ascii")
        for k, v in figures.items()
    }
    costs = m["costs"]
    files = ", ".join(html.escape(p.name) for p in paths.values())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Charlie backtest: {html.escape(inputs["first_day"])} to {
        html.escape(inputs["last_day"])
    }</title>
<style>{_CSS}</style></head><body>
<h1>Charlie backtest</h1>
<p class="muted">{inputs["predictions"]:,} predictions on {len(inputs["tickers"])} tickers
({html.escape(", ".join(inputs["tickers"]))}), decided {inputs["first_decision"]} to
{inputs["last_decision"]}; {inputs["days"]} trading days from {inputs["first_day"]} to
{inputs["last_day"]}. Initial cash {cfg["initial_cash"]:,.0f}; commission
{cfg["transaction_cost_bps"]:g} bps, slippage {cfg["slippage_bps"]:g} bps;
sizing {html.escape(cfg["position_sizing"])}; shorts {"on" if cfg["allow_shorts"] else "off"}.</p>

<h2>Strategy against the benchmark</h2>
<p>The strategy trades the predictions; the benchmark buys the same tickers in equal weights
once and holds them, under the same costs.</p>
{_table(["metric", "strategy", "benchmark", "difference"], metric_rows)}
<p class="muted">Costs paid: strategy {_fmt(costs["strategy"]["total"], "money")}
(commission {_fmt(costs["strategy"]["commission"], "money")}, slippage
{_fmt(costs["strategy"]["slippage"], "money")}) on {
        _fmt(costs["strategy"]["traded_notional"], "money")
    }
traded; benchmark {_fmt(costs["benchmark"]["total"], "money")}.</p>
<img alt="Equity of the strategy and the benchmark" src="{images["equity"]}">
<img alt="Drawdown of the strategy and the benchmark" src="{images["drawdown"]}">

<h2>Cost sensitivity</h2>
<p>Both reruns at each commission (bps, one way), slippage as configured; the first row is
frictionless.</p>
{
        _table(
            [
                "commission + slippage (bps)",
                "strategy return",
                "strategy CAGR",
                "strategy Sharpe",
                "strategy costs",
                "benchmark return",
                "benchmark Sharpe",
                "excess return",
            ],
            cost_rows,
        )
    }

<h2>Predictions</h2>
<p>By action: {html.escape(actions)}. UNPARSEABLE predictions
({inputs["unparseable"]:,}) are traded like HOLD.
{
        ""
        if inputs["last_decision_filled"]
        else "The prices end on the last decision's day, so it was not filled."
    }
Missing prices (ticker-days without a close): {inputs["missing_prices"]:,}.</p>
{
        _table(
            ["ticker", "predictions", "trades", "traded notional", "costs", "P&L", "final weight"],
            ticker_rows,
        )
    }

<h2>Conventions</h2>
<dl>{conventions_html}</dl>
<p class="muted">Files: {files}.</p>
</body></html>
"""
