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
    """Coerce a provider's frame to the contract: columns, dtypes, order, date window, and
    only rows that pass ``charlie.prices.validate`` (the dropped ones are counted by reason in
    ``frame.attrs["dropped"]``). A missing ``adj_close`` becomes the close (no adjustment
    known).
    """
    from charlie.prices.validate import clean_bars

    clean, dropped = clean_bars(frame, start, end)
    clean.attrs["dropped"] = dict(dropped)
    return clean
