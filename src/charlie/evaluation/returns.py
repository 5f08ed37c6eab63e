"""Forward returns as DESIGN.md fixes them, and the executable return the backtest can earn.

A record dated t is decided at t's close, where t's bar is the ticker's last bar dated on or
before the record's date. Two returns over h trading days, counted in the ticker's own bars:

- close to close (DESIGN.md's forward return): adj_close(t+h) / adj_close(t) - 1;
- executable (what a fill at the next open earns, as in the backtest): adj_close(t+h) /
  adj_open(t+1) - 1, where adj_open = open x adj_close / close (the backtest's adjusted
  price basis), so h = 1 is the next day's open-to-close return.

Either is NaN when the window runs past the data (never a partial window) and when the
ticker has no bar at or before t.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def _positions(bars: pd.DataFrame, dates: Sequence[str]) -> np.ndarray:
    """Per record date, the index of the last bar dated on or before it (-1: none)."""
    days = bars["date"].to_numpy(dtype="datetime64[D]")
    return np.searchsorted(days, np.array(dates, dtype="datetime64[D]"), side="right") - 1


def _window_returns(
    end: np.ndarray, start: np.ndarray, pos: np.ndarray, windows: Sequence[int], offset: int
) -> dict[int, np.ndarray]:
    """``end[pos + h] / start[pos + offset] - 1`` per window; NaN before the first bar, past the
    data, or where a price is missing or zero."""
    out = {}
    for h in windows:
        ahead = pos + h
        valid = (pos >= 0) & (ahead < len(end))
        result = np.full(len(pos), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            result[valid] = end[ahead[valid]] / start[pos[valid] + offset] - 1.0
        result[~np.isfinite(result)] = np.nan
        out[h] = result
    return out


def forward_returns(
    bars: pd.DataFrame, dates: Sequence[str], windows: Sequence[int]
) -> dict[int, np.ndarray]:
    """Close-to-close forward returns for each record date of one ticker, per window."""
    adj = bars["adj_close"].to_numpy(dtype="float64")
    return _window_returns(adj, adj, _positions(bars, dates), windows, offset=0)


def executable_returns(
    bars: pd.DataFrame, dates: Sequence[str], windows: Sequence[int], basis: str = "adjusted"
) -> dict[int, np.ndarray]:
    """Next-open-to-close forward returns for each record date of one ticker, per window.

    ``basis`` is the backtest's ``price_basis``: adjusted (adj_close(t+h) / adj_open(t+1) - 1)
    or raw (close(t+h) / open(t+1) - 1, what a backtest on raw prices earns: no dividends,
    and a split inside the window shows as a move).

    Raises:
        KeyError: ``bars`` has no ``open`` or ``close`` column.
    """
    close = bars["close"].to_numpy(dtype="float64")
    opens = bars["open"].to_numpy(dtype="float64")
    if basis == "raw":
        return _window_returns(close, opens, _positions(bars, dates), windows, offset=1)
    adj = bars["adj_close"].to_numpy(dtype="float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        adj_open = opens * adj / close
    return _window_returns(adj, adj_open, _positions(bars, dates), windows, offset=1)


def momentum_sign(bars: pd.DataFrame, dates: Sequence[str], lookback: int = 20) -> np.ndarray:
    """+1 / -1 for the sign of the trailing ``lookback``-day return as of each date (0: unknown)."""
    adj = bars["adj_close"].to_numpy(dtype="float64")
    pos = _positions(bars, dates)
    back = pos - lookback
    valid = (pos >= 0) & (back >= 0)
    sign = np.zeros(len(pos))
    sign[valid] = np.sign(adj[pos[valid]] / adj[back[valid]] - 1.0)
    return sign
