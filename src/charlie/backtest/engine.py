"""The portfolio engine: pure numpy kernels on date x ticker arrays.

Shapes: ``T`` rows of trading dates by ``N`` ticker columns; a missing price is NaN. Row ``t``
of a target array is what was decided after the close of date ``t``; it is traded at row
``t + 1``, never earlier. The pandas layer builds these arrays (``charlie.backtest.panel``)
and wraps the results (``charlie.backtest.core``); nothing here knows about dates, tickers or
files.

Execution (DESIGN.md, "Backtest execution"):

* fill at the open of ``t + 1``, or at its close when it has no open; a ticker without
  either price that day is not traded (its target is retried the next day it has a price);
* target shares = target weight x equity at the fill / reference price, where the equity
  values each position at today's reference price (the last mark when it has none);
* with a rebalance band, a ticker is traded only when its target weight changed since the
  last time it was traded toward, or when its weight at the fill has drifted from the target
  by more than ``band x |target|`` (relative drift); without one, every day;
* slippage moves the fill price against the trade: ``ref x (1 + s)`` for buys,
  ``ref x (1 - s)`` for sells; the commission is ``c x |shares| x fill price``;
* positions are marked at the close (a day without a close keeps the day's open, else the
  last known price); cash earns nothing and may go negative (borrowing at 0 %); short sale
  proceeds go to cash; fractional shares are allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BPS = 1e-4
DUST = 1e-12
"""Trades smaller than this fraction of equity are rounding noise and are not made."""


@dataclass(frozen=True)
class Simulation:
    """What :func:`simulate` returns; every array has ``T`` rows."""

    equity: np.ndarray
    """(T,) cash plus positions marked at the close."""
    cash: np.ndarray
    """(T,) after the day's fills."""
    positions: np.ndarray
    """(T, N) shares held at the close (negative = short)."""
    traded: np.ndarray
    """(T, N) shares bought (+) or sold (-) at the day's fill; 0 where nothing traded."""
    fill_price: np.ndarray
    """(T, N) price paid or received, slippage included; NaN where nothing traded."""
    reference_price: np.ndarray
    """(T, N) the open, or the close where the open is missing; NaN with neither."""
    commission: np.ndarray
    """(T, N) commission paid on the day's fill."""
    slippage: np.ndarray
    """(T, N) what slippage cost: ``|traded| x |fill - reference|``."""
    mark: np.ndarray
    """(T, N) the price positions are marked at (0 before a ticker's first price)."""

    @property
    def costs(self) -> np.ndarray:
        """(T,) commission plus slippage per day."""
        return self.commission.sum(axis=1) + self.slippage.sum(axis=1)

    @property
    def notional(self) -> np.ndarray:
        """(T, N) |traded notional| at the fill price."""
        return np.abs(self.traded) * np.nan_to_num(self.fill_price)


def ffill(values: np.ndarray) -> np.ndarray:
    """Forward-fill NaN down the rows of a 2-D array; leading NaN stay NaN."""
    rows = np.arange(values.shape[0])[:, None]
    last = np.where(np.isnan(values), 0, rows)
    np.maximum.accumulate(last, axis=0, out=last)
    return values[last, np.arange(values.shape[1])]


def hold_forward(decisions: np.ndarray, initial: float = 0.0) -> np.ndarray:
    """Targets from decisions, where NaN means "keep the current target" (HOLD, no prediction).

    Args:
        decisions: (T, N) units (or weights) decided at each close; NaN keeps the last one.
        initial: The target before any decision (flat).
    """
    held = ffill(np.asarray(decisions, dtype=np.float64))
    return np.where(np.isnan(held), initial, held)


def unit_weight(
    sizing: str, n_tickers: int, *, fixed_pct_value: float = 0.02, max_units: float = 2.0
) -> float:
    """Fraction of equity that one unit of target stands for.

    ``fixed_pct``: ``fixed_pct_value`` per ticker, whatever the number of tickers.
    ``equal_weight``: ``1 / (n_tickers x max_units)``, so a book where every ticker holds
    ``max_units`` is 100 % invested.
    """
    if sizing == "fixed_pct":
        return float(fixed_pct_value)
    if sizing == "equal_weight":
        if n_tickers < 1 or max_units <= 0:
            raise ValueError("equal_weight sizing needs at least one ticker and max_units > 0")
        return 1.0 / (n_tickers * max_units)
    raise ValueError(f"unknown position sizing {sizing!r}; use fixed_pct or equal_weight")


def reference_prices(open_: np.ndarray, close: np.ndarray) -> np.ndarray:
    """The price a fill is made at before slippage: the open, or the close without one."""
    return np.where(np.isnan(open_), close, open_)


def first_fill_mask(open_: np.ndarray, close: np.ndarray) -> np.ndarray:
    """(T, N) True on the decision row just before each ticker's first possible fill.

    With constant target weights this turns :func:`simulate` into buy-and-hold: each ticker is
    bought once, at its first price after the first decision, and never rebalanced.
    """
    tradable = ~np.isnan(reference_prices(open_, close))
    tradable[0] = False  # nothing decided before row 0 can fill on it
    first = np.where(tradable.any(axis=0), tradable.argmax(axis=0), -1)
    mask = np.zeros(open_.shape, dtype=bool)
    has = first > 0
    mask[first[has] - 1, np.flatnonzero(has)] = True
    return mask


def _check(open_: np.ndarray, close: np.ndarray, weights: np.ndarray) -> None:
    if open_.ndim != 2 or open_.shape != close.shape or close.shape != weights.shape:
        raise ValueError(
            f"open {open_.shape}, close {close.shape} and target weights {weights.shape} "
            "must be 2-D arrays of the same (dates, tickers) shape"
        )
    for name, prices in (("open", open_), ("close", close)):
        present = prices[~np.isnan(prices)]
        if present.size and not (np.isfinite(present).all() and (present > 0).all()):
            raise ValueError(f"{name} prices must be positive and finite (NaN for missing)")
    if not np.isfinite(weights).all():
        raise ValueError("target weights must be finite (resolve HOLD with hold_forward)")


def simulate(
    open_: np.ndarray,
    close: np.ndarray,
    target_weights: np.ndarray,
    *,
    initial_cash: float,
    commission_bps: float = 0.0,
    slippage_bps: float = 0.0,
    rebalance: np.ndarray | None = None,
    rebalance_band: float | None = None,
) -> Simulation:
    """Trade toward target weights at the next day's open and mark at the close, day by day.

    Equity is path dependent (sizes follow it), so the rows are a loop; each row is
    vectorised over tickers.

    Args:
        open_: (T, N) open prices, NaN where missing.
        close: (T, N) close prices, NaN where missing.
        target_weights: (T, N) target fraction of equity per ticker, decided at the close of
            each row (finite; negative = short).
        initial_cash: Equity at row 0, all cash; nothing can be filled on row 0.
        commission_bps: Commission in bps of traded notional at the fill price.
        slippage_bps: Fill price moved this many bps against the trade.
        rebalance: Optional (T, N) bool: which decisions are traded; ``None`` trades every
            ticker every day toward its target. Undecided positions drift with prices.
        rebalance_band: Optional relative drift band (>= 0): a ticker whose target weight is
            the one it was last traded toward is traded only when its weight at the fill is
            off that target by more than ``band x |target|``; a changed target is always
            traded (retried while the ticker has no price). ``None`` trades every day.

    Returns:
        The :class:`Simulation`.
    """
    open_ = np.asarray(open_, dtype=np.float64)
    close = np.asarray(close, dtype=np.float64)
    weights = np.asarray(target_weights, dtype=np.float64)
    _check(open_, close, weights)
    if rebalance_band is not None and not (math.isfinite(rebalance_band) and rebalance_band >= 0):
        raise ValueError(f"rebalance_band must be a finite number >= 0, got {rebalance_band!r}")
    n_rows, n_cols = close.shape
    ref = reference_prices(open_, close)
    has_ref = ~np.isnan(ref)
    trade_ok = has_ref.copy()
    if rebalance is not None:
        trade_ok[1:] &= np.asarray(rebalance, dtype=bool)[:-1]
    mark = np.nan_to_num(ffill(np.where(np.isnan(close), open_, close)))
    # valuation at the fill: today's reference price, else the last mark
    value_price = np.where(has_ref, ref, np.vstack([mark[:1], mark[:-1]]))
    commission_rate, slip = commission_bps * BPS, slippage_bps * BPS

    equity = np.empty(n_rows)
    cash_out = np.empty(n_rows)
    positions = np.zeros((n_rows, n_cols))
    traded = np.zeros((n_rows, n_cols))
    fill_price = np.full((n_rows, n_cols), np.nan)
    commission = np.zeros((n_rows, n_cols))
    slippage = np.zeros((n_rows, n_cols))
    shares = np.zeros(n_cols)
    cash = float(initial_cash)
    traded_toward = np.zeros(n_cols)  # the target each ticker was last traded toward (flat)
    if n_rows:
        equity[0] = cash_out[0] = cash

    for t in range(1, n_rows):
        ok = trade_ok[t]
        budget = max(cash + float(shares @ value_price[t]), 0.0)  # a wiped-out book only exits
        target = weights[t - 1]
        if rebalance_band is not None and budget > 0:
            drift = np.abs(shares * value_price[t] / budget - target)
            ok = ok & ((target != traded_toward) | (drift > rebalance_band * np.abs(target)))
        with np.errstate(invalid="ignore"):
            delta = np.where(ok, target * budget / ref[t] - shares, 0.0)
        traded_toward = np.where(ok, target, traded_toward)
        delta[np.abs(delta) * value_price[t] <= DUST * budget] = 0.0
        traded_now = np.flatnonzero(delta)
        if traded_now.size:
            d = delta[traded_now]
            r = ref[t, traded_now]
            px = r * (1.0 + slip * np.sign(d))
            fees = np.abs(d) * px * commission_rate
            cash -= float(d @ px) + float(fees.sum())
            shares[traded_now] += d
            traded[t, traded_now] = d
            fill_price[t, traded_now] = px
            commission[t, traded_now] = fees
            slippage[t, traded_now] = np.abs(d) * r * slip
        positions[t] = shares
        cash_out[t] = cash
        equity[t] = cash + float(shares @ mark[t])

    return Simulation(
        equity=equity,
        cash=cash_out,
        positions=positions,
        traded=traded,
        fill_price=fill_price,
        reference_price=ref,
        commission=commission,
        slippage=slippage,
        mark=mark,
    )


def exposures(sim: Simulation) -> tuple[np.ndarray, np.ndarray]:
    """(gross, net) exposure per day as fractions of equity; NaN where equity <= 0."""
    value = sim.positions * sim.mark
    with np.errstate(divide="ignore", invalid="ignore"):
        safe = np.where(sim.equity > 0, sim.equity, np.nan)
        return np.abs(value).sum(axis=1) / safe, value.sum(axis=1) / safe


def daily_turnover(sim: Simulation) -> np.ndarray:
    """Traded notional (both sides) per day over the previous close's equity; 0 on row 0."""
    out = np.zeros(sim.equity.shape[0])
    if out.size > 1:
        prev = sim.equity[:-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[1:] = np.where(prev > 0, sim.notional[1:].sum(axis=1) / prev, np.nan)
    return out
