"""The tear sheet's figures and tables beyond the headline metrics, as quantstats and pyfolio
show them: period returns, rolling risk, the worst drawdowns, round-trip trade statistics.

Pure functions of the backtest's daily frame (date, equity, returns, gross/net exposure,
turnover) and its trades (date, ticker, side, shares, notional, commission, position_after);
:mod:`charlie.backtest.report` draws and renders them.

Conventions:
    - period returns compound the daily returns inside each month (or week);
    - rolling Sharpe and volatility are annualised (x 252 and x sqrt(252)) over
      :func:`rolling_window` trading days, with no risk-free rate;
    - a drawdown runs from a peak of equity to its recovery (the first day equity is back at
      the peak), its trough is the lowest equity in between; one not yet recovered at the end
      has no recovery date;
    - a round trip is one ticker's position from flat to flat (a position that flips from long
      to short closes one trip and opens another at that fill); its P&L is the cash it
      returned: sale notional minus purchase notional minus commissions (slippage is in the fill
      prices); a trip still open at the end is counted apart and not in the statistics.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

PERIODS = 252
SHORT_TEST_DAYS = 252
"""Below this many trading days the sheet shows weekly returns beside the monthly ones."""


def rolling_window(days: int) -> int:
    """63 trading days (a quarter) when there are at least 126, else 21 (a month)."""
    return 63 if days >= 126 else 21


def _daily(daily: pd.DataFrame) -> pd.Series:
    return pd.Series(daily["returns"].to_numpy(float), index=pd.to_datetime(daily["date"]))


def monthly_returns(daily: pd.DataFrame) -> pd.DataFrame:
    """Compounded returns, one row per year, one column per month (1..12; NaN outside)."""
    r = _daily(daily)
    if r.empty:
        return pd.DataFrame(columns=range(1, 13), dtype=float)
    grouped = (1.0 + r).groupby([r.index.year, r.index.month]).prod() - 1.0
    table = grouped.unstack()
    table.index.name, table.columns.name = "year", "month"
    return table.reindex(columns=range(1, 13))


def weekly_returns(daily: pd.DataFrame) -> pd.DataFrame:
    """Compounded returns, one row per month (``2025-01``), one column per week of that month
    (1..6, the week a day falls in counted from the month's first Monday-started week)."""
    r = _daily(daily)
    if r.empty:
        return pd.DataFrame(columns=range(1, 7), dtype=float)
    first = r.index.to_period("M").to_timestamp()
    week = ((r.index.day - 1 + first.day_of_week) // 7 + 1).astype(int)
    month = r.index.strftime("%Y-%m")
    grouped = (1.0 + r).groupby([month, week]).prod() - 1.0
    table = grouped.unstack()
    table.index.name, table.columns.name = "month", "week"
    return table.reindex(columns=range(1, 7))


def rolling_risk(daily: pd.DataFrame, window: int | None = None) -> pd.DataFrame:
    """Annualised rolling Sharpe and volatility (NaN until a full window, and where the
    window's returns do not vary)."""
    r = _daily(daily)
    window = window or rolling_window(len(r))
    mean = r.rolling(window).mean()
    std = r.rolling(window).std(ddof=1)
    sharpe = (mean / std.where(std > 1e-12)) * math.sqrt(PERIODS)
    return pd.DataFrame({"sharpe": sharpe, "volatility": std * math.sqrt(PERIODS)})


def drawdown_periods(daily: pd.DataFrame, top: int = 5) -> list[dict[str, Any]]:
    """The ``top`` deepest drawdowns: start (the peak's day), trough, recovery (None while
    under water at the end), depth (a negative fraction) and length in trading days (to the
    recovery, or to the last day)."""
    dates = pd.to_datetime(daily["date"]).dt.date.to_list()
    equity = daily["equity"].to_numpy(float)
    periods, peak_i, trough_i, under = [], 0, 0, False
    for i in range(len(equity)):
        if equity[i] >= equity[peak_i]:
            if under:
                periods.append((peak_i, trough_i, i))
                under = False
            peak_i = trough_i = i
        else:
            under = True
            if equity[i] < equity[trough_i]:
                trough_i = i
    if under:
        periods.append((peak_i, trough_i, None))
    rows = [
        {
            "start": dates[p].isoformat(),
            "trough": dates[t].isoformat(),
            "recovery": dates[r].isoformat() if r is not None else None,
            "depth": float(equity[t] / equity[p] - 1.0),
            "days": (r if r is not None else len(equity) - 1) - p,
        }
        for p, t, r in periods
    ]
    return sorted(rows, key=lambda row: row["depth"])[:top]


def round_trips(trades: pd.DataFrame, dates: pd.Series) -> tuple[pd.DataFrame, int]:
    """Closed round trips (ticker, opened, closed, side, days held in sessions, pnl, return on
    the opening notional) and how many trips were still open at the end."""
    sessions = pd.to_datetime(dates).dt.date.to_numpy()
    columns = ["ticker", "opened", "closed", "side", "days", "pnl", "return"]
    trips: list[dict[str, Any]] = []
    still_open = 0
    if trades.empty:
        return pd.DataFrame(columns=columns), 0
    frame = trades.assign(day=pd.to_datetime(trades["date"]).dt.date)
    flat = 1e-6  # shares: the trades file keeps 12 significant digits

    def close(trip: dict[str, Any], day: Any) -> None:
        held = int(np.searchsorted(sessions, day) - np.searchsorted(sessions, trip["opened"]))
        trips.append({"ticker": trip["ticker"], "opened": trip["opened"].isoformat(),
                      "closed": day.isoformat(), "side": trip["side"], "days": held,
                      "pnl": trip["cash"],
                      "return": trip["cash"] / trip["cost"] if trip["cost"] else math.nan})  # fmt: skip

    for ticker, rows in frame.groupby("ticker", sort=True):
        before, trip = 0.0, None
        for row in rows.itertuples(index=False):
            after = float(row.position_after)
            after = 0.0 if abs(after) < flat else after
            sign = 1.0 if row.side == "BUY" else -1.0
            shares = abs(float(row.shares))  # the trades file signs shares by side
            price = abs(float(row.notional)) / max(shares, 1e-12)
            fee = float(row.commission) / max(shares, 1e-12)  # per share
            closing = abs(before) if before and np.sign(after) != np.sign(before) else 0.0
            closing = min(closing, shares)
            if trip is not None and closing:
                trip["cash"] += -sign * closing * price - closing * fee
                close(trip, row.day)
                trip = None
            rest = shares - closing
            if rest > flat:
                if trip is None:
                    trip = {"ticker": ticker, "opened": row.day, "cash": 0.0, "cost": 0.0,
                            "side": "long" if after > 0 else "short"}  # fmt: skip
                trip["cash"] += -sign * rest * price - rest * fee
                if np.sign(after) == sign:  # adding to the position (not reducing it)
                    trip["cost"] += rest * price
            before = after
        still_open += trip is not None
    return pd.DataFrame(trips, columns=columns), still_open


def trade_statistics(trips: pd.DataFrame, still_open: int, daily: pd.DataFrame) -> dict[str, Any]:
    """Win rate, payoff ratio, profit factor, average holding period and annualised turnover."""
    pnl = trips["pnl"].to_numpy(float) if len(trips) else np.array([])
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    turnover = daily["turnover"].to_numpy(float) if "turnover" in daily else np.array([])
    return {
        "round_trips": len(pnl),
        "open_at_end": still_open,
        "win_rate": float(len(wins) / len(pnl)) if len(pnl) else math.nan,
        "average_win": float(wins.mean()) if len(wins) else math.nan,
        "average_loss": float(losses.mean()) if len(losses) else math.nan,
        "payoff_ratio": float(wins.mean() / -losses.mean())
        if len(wins) and len(losses)
        else math.nan,
        "profit_factor": float(wins.sum() / -losses.sum()) if len(losses) else math.nan,
        "average_holding_days": float(trips["days"].mean()) if len(trips) else math.nan,
        "annual_turnover": float(turnover.mean() * PERIODS) if len(turnover) else math.nan,
    }
