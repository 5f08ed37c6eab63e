"""The price-provider interface and the errors that steer the fallback between providers.

A provider returns a frame in the DESIGN.md price format: a ``date`` column of
``datetime64[ns]`` (naive, the exchange's calendar date), then ``open, high, low, close,
adj_close`` (float64; OHLC raw, ``adj_close`` adjusted for splits and dividends) and ``volume``
(float64), sorted by date, one row per date, only dates within ``[start, end]``.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

import pandas as pd

PRICE_COLUMNS = ("date", "open", "high", "low", "close", "adj_close", "volume")


class ProviderError(Exception):
    """Base class. Messages are one sentence and never contain an API key."""


class AuthError(ProviderError):
    """401/403: the key is missing or not entitled. The run stops at once: retrying or falling
    back would hide a configuration problem the user must fix."""


class NotAvailable(ProviderError):
    """402 (quota), 404, or an empty answer: this provider cannot serve the request; the next
    provider is tried."""


class TransientError(ProviderError):
    """429, 5xx or timeouts that persisted through every retry; the next provider is tried."""


class PriceProvider(Protocol):
    """Anything that can fetch daily bars for one ticker."""

    name: str

    def fetch(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        """Daily bars for ``ticker`` dated ``start`` to ``end`` inclusive.

        Raises:
            AuthError, NotAvailable, TransientError: as documented on each class.
        """
        ...


def normalize_frame(
    frame: pd.DataFrame, start: dt.date | None = None, end: dt.date | None = None
) -> pd.DataFrame:
    """Coerce a provider's frame to the contract: columns, dtypes, order, date window.

    Rows without a close are dropped (a bar with no close is no bar); duplicate dates keep the
    last row; a missing ``adj_close`` becomes the close (no adjustment known).
    """
    frame = frame.copy()
    dates = pd.to_datetime(frame["date"])
    if dates.dt.tz is not None:  # keep the exchange's calendar date, drop the zone
        dates = dates.dt.tz_localize(None)
    frame["date"] = dates.dt.normalize().astype("datetime64[ns]")
    if "adj_close" not in frame:
        frame["adj_close"] = frame["close"]
    frame = frame.loc[:, list(PRICE_COLUMNS)]
    for column in PRICE_COLUMNS[1:]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame["adj_close"] = frame["adj_close"].fillna(frame["close"])
    keep = frame["close"].notna()
    if start is not None:
        keep &= frame["date"] >= pd.Timestamp(start)
    if end is not None:
        keep &= frame["date"] <= pd.Timestamp(end)
    frame = frame.loc[keep]
    frame = frame.drop_duplicates("date", keep="last").sort_values("date")
    return frame.reset_index(drop=True)
