"""Forward returns as DESIGN.md fixes them.

The forward return over h trading days from a record dated t is adj_close(t+h) / adj_close(t)
- 1, counted in the ticker's own bars, where t's bar is the last bar dated on or before the
record's date. It is NaN when the window runs past the data (never a partial window) and when
the ticker has no bar at or before t.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def forward_returns(
    bars: pd.DataFrame, dates: Sequence[str], windows: Sequence[int]
) -> dict[int, np.ndarray]:
    """Forward returns for each record date of one ticker, per window."""
    adj = bars["adj_close"].to_numpy(dtype="float64")
    days = bars["date"].to_numpy(dtype="datetime64[D]")
    pos = np.searchsorted(days, np.array(dates, dtype="datetime64[D]"), side="right") - 1
    out = {}
    for h in windows:
        ahead = pos + h
        valid = (pos >= 0) & (ahead < len(adj))
        result = np.full(len(pos), np.nan)
        result[valid] = adj[ahead[valid]] / adj[pos[valid]] - 1.0
        out[h] = result
    return out


def momentum_sign(bars: pd.DataFrame, dates: Sequence[str], lookback: int = 20) -> np.ndarray:
    """+1 / -1 for the sign of the trailing ``lookback``-day return as of each date (0: unknown)."""
    adj = bars["adj_close"].to_numpy(dtype="float64")
    days = bars["date"].to_numpy(dtype="datetime64[D]")
    pos = np.searchsorted(days, np.array(dates, dtype="datetime64[D]"), side="right") - 1
    back = pos - lookback
    valid = (pos >= 0) & (back >= 0)
    sign = np.zeros(len(pos))
    sign[valid] = np.sign(adj[pos[valid]] / adj[back[valid]] - 1.0)
    return sign
