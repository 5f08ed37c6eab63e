"""Daily bars from Yahoo Finance through yfinance (no key; an unofficial API, so a fallback).

yfinance reports trouble by logging it, not by raising: ``yfinance.download`` catches every
exception per ticker (a rate limit included), logs it on the ``yfinance`` logger at ERROR and
returns an empty frame. This provider therefore takes the records yfinance logs from the calling
thread off that logger while it runs, classifies them (rate limit or network → TransientError,
anything else → NotAvailable) and re-emits them on this module's logger at WARNING or below.

Yahoo's ``Close`` (with ``auto_adjust=False``) is split-adjusted, though not dividend-adjusted:
every level before a split is divided by its ratio, so a past snapshot's quoted prices would
change after each later split. This provider undoes that: it asks for the bars from ``start``
through today with the split events (``Stock Splits``), multiplies open, high, low and close
before each split by the product of the ratios of every split after that bar, divides the
volume by it, and then keeps ``start`` to ``end``. ``adj_close`` stays Yahoo's Adj Close.

yfinance is imported inside :meth:`YFinanceProvider.fetch`: importing it takes about a second and
the CLI must start fast.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pandas as pd

from charlie.prices.base import (
    PRICE_COLUMNS,
    NotAvailable,
    ProviderError,
    TransientError,
    normalize_frame,
)
from charlie.prices.cache import CachedProvider

log = logging.getLogger(__name__)

_YF_LOGGER = "yfinance"
_COLUMNS = {
    "Open": "open",
    "High": "high",
    "Low": "low",
    "Close": "close",
    "Adj Close": "adj_close",
    "Volume": "volume",
}
# Text in yfinance's error records that marks a condition worth retrying later: its rate-limit
# exception (download() logs its repr) or Yahoo's 429 body, and libcurl's network failures
# ("Failed to perform, curl: (28) ... timed out").
_RATE_LIMIT_MARKERS = ("YFRateLimitError", "Too Many Requests", "Rate limited")
_NETWORK_MARKERS = ("curl: (", "timed out")
# "['AAPL']: reason", "$AAPL: reason" → "reason"
_SYMBOL_PREFIX = re.compile(r"^\s*(?:\[[^\]]*\]|\$\S+)\s*:\s*")


class _ThreadLogCapture(logging.Filter):
    """A filter on the yfinance logger that takes the records logged by one thread."""

    def __init__(self) -> None:
        super().__init__()
        self._thread = threading.get_ident()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread is not None and record.thread != self._thread:
            return True  # another thread's yfinance call: not ours to take
        self.records.append(record)
        return False

    def errors(self) -> list[str]:
        """The one-line text of each captured record at ERROR or above, symbol prefix removed."""
        messages = []
        for record in self.records:
            if record.levelno < logging.ERROR:
                continue
            text = " ".join(record.getMessage().split())
            if not text or text.endswith("Failed download:"):
                continue
            messages.append(_SYMBOL_PREFIX.sub("", text))
        return messages

    def replay(self, *, failed: bool) -> None:
        """Re-emit the captured records on this module's logger, never above WARNING.

        When the fetch failed the raised error already carries the reason, so the records go to
        DEBUG only.
        """
        for record in self.records:
            level = logging.DEBUG if failed else min(record.levelno, logging.WARNING)
            log.log(level, "yfinance: %s", " ".join(record.getMessage().split()))


@contextmanager
def _captured_yfinance_logs() -> Iterator[_ThreadLogCapture]:
    """Take yfinance's log records (this thread's) and its Python warnings while the block runs.

    Warnings (pandas deprecations raised inside yfinance) go to DEBUG instead of stderr.
    ``catch_warnings`` swaps process-wide state: fetches are meant to run one at a time.
    """
    capture = _ThreadLogCapture()
    logger = logging.getLogger(_YF_LOGGER)
    logger.addFilter(capture)
    try:
        with warnings.catch_warnings(record=True) as caught:
            try:
                yield capture
            finally:
                for warning in caught:
                    log.debug(
                        "yfinance warning: %s: %s", warning.category.__name__, warning.message
                    )
    finally:
        logger.removeFilter(capture)


def _is_rate_limit(text: str) -> bool:
    return any(marker in text for marker in _RATE_LIMIT_MARKERS)


def _is_transient(text: str) -> bool:
    return _is_rate_limit(text) or any(marker in text for marker in _NETWORK_MARKERS)


def _single_ticker_columns(frame: pd.DataFrame, ticker: str) -> pd.DataFrame:
    """Flatten yfinance's (Price, Ticker) or (Ticker, Price) column MultiIndex to price names."""
    columns = frame.columns
    if not isinstance(columns, pd.MultiIndex):
        return frame
    price_levels = [
        level for level in range(columns.nlevels) if "Close" in set(columns.get_level_values(level))
    ]
    if not price_levels:
        return frame.iloc[:, 0:0]  # no price columns at all: treated as empty
    price_level = price_levels[0]
    for level in range(columns.nlevels):
        if level == price_level:
            continue
        values = set(frame.columns.get_level_values(level))
        if len(values) > 1:  # several tickers: keep ours (download() upper-cases symbols)
            key = ticker.upper() if ticker.upper() in values else ticker
            if key not in values:
                return frame.iloc[:, 0:0]
            frame = frame.loc[:, frame.columns.get_level_values(level) == key]
    flat = frame.copy()
    flat.columns = list(frame.columns.get_level_values(price_level))
    return flat


def _undo_splits(frame: pd.DataFrame) -> pd.DataFrame:
    """Raw traded prices from Yahoo's split-adjusted ones, using the ``Stock Splits`` column.

    A bar is multiplied (its volume divided) by the product of the ratios of the splits dated
    after it; a split's own bar is already post-split. Without the column nothing changes.
    """
    if "Stock Splits" not in frame.columns:
        return frame
    frame = frame.sort_index()
    ratios = pd.to_numeric(frame["Stock Splits"], errors="coerce").fillna(0.0)
    ratios = ratios.where(ratios > 0, 1.0).to_numpy()
    after = pd.Series(ratios[::-1].cumprod()[::-1], index=frame.index).shift(-1, fill_value=1.0)
    frame = frame.copy()
    for column in ("Open", "High", "Low", "Close"):
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce") * after
    if "Volume" in frame.columns:
        frame["Volume"] = pd.to_numeric(frame["Volume"], errors="coerce") / after
    return frame


def _to_price_frame(raw: pd.DataFrame | None, ticker: str) -> pd.DataFrame:
    """yfinance's frame (DatetimeIndex, capitalised columns) → base.py's, splits undone."""
    empty = pd.DataFrame(columns=list(PRICE_COLUMNS))
    if raw is None or raw.empty:
        return empty
    frame = _single_ticker_columns(raw, ticker)
    if "Close" not in frame.columns:
        return empty
    frame = _undo_splits(frame)
    index = pd.DatetimeIndex(frame.index)
    if index.tz is not None:
        # Daily bars are stamped at the exchange's local midnight: dropping the zone keeps that
        # calendar date. Converting to UTC first would move Asian and Australian sessions to the
        # previous day.
        index = index.tz_localize(None)
    out = frame.loc[:, [c for c in _COLUMNS if c in frame.columns]].rename(columns=_COLUMNS)
    out.insert(0, "date", index.normalize())
    return out.reset_index(drop=True)


def from_params(params: Any, env: Mapping[str, str]) -> CachedProvider:
    """The ``yfinance`` provider of the ``prices`` section (``prices.yfinance``), cached."""
    return CachedProvider(YFinanceProvider(timeout_s=params.yfinance.timeout_s), params.cache_dir)


class YFinanceProvider:
    """Daily bars from Yahoo through yfinance: raw (split-undone) OHLCV, Yahoo's adj_close."""

    name = "yfinance"
    cache_version = 2  # raw closes; the version-1 cache held Yahoo's split-adjusted ones

    def __init__(self, *, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s

    def fetch(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        """Daily bars for ``ticker`` dated ``start`` to ``end`` inclusive (see PriceProvider).

        The request runs through today: the splits after ``end`` adjust Yahoo's closes too.
        """
        try:
            import yfinance as yf
        except ImportError:
            raise NotAvailable("The yfinance package is not installed.") from None
        window = f"{ticker} from {start.isoformat()} to {end.isoformat()}"
        with _captured_yfinance_logs() as capture:
            try:
                raw = yf.download(
                    ticker,
                    start=start,
                    end=None,  # through today, for every later split; cut to `end` below
                    interval="1d",
                    auto_adjust=False,  # split-adjusted OHLC, and "Adj Close" as its own column
                    actions=True,  # the "Stock Splits" column, to undo the split adjustment
                    repair=False,
                    keepna=False,
                    ignore_tz=False,  # keep the exchange zone; _to_price_frame drops it
                    group_by="column",
                    progress=False,
                    threads=False,
                    timeout=self.timeout_s,
                )
            except Exception as exc:
                # download() catches per-ticker errors itself; this is for what escapes it
                # (session setup, a future version that raises). Never let a yfinance traceback
                # escape: keep it at DEBUG, raise one sentence.
                capture.replay(failed=True)
                log.debug("yfinance failed for %s", window, exc_info=True)
                raise self._error(window, [f"{type(exc).__name__}: {exc}"]) from None
        frame = normalize_frame(_to_price_frame(raw, ticker), start, end)
        capture.replay(failed=frame.empty)
        if frame.empty:
            raise self._error(window, capture.errors())
        return frame

    @staticmethod
    def _error(window: str, errors: list[str]) -> ProviderError:
        """One sentence for a fetch that produced no bars, from yfinance's error messages."""
        reasons = [_first_sentence(text) for text in errors]
        if any(_is_rate_limit(text) for text in reasons):
            return TransientError(f"Yahoo rate-limited the request for {window} (HTTP 429).")
        network = [text for text in reasons if _is_transient(text)]
        if network:
            return TransientError(f"Yahoo could not be reached for {window} ({network[0]}).")
        reason = reasons[-1] if reasons else "no rows with a close"
        return NotAvailable(f"yfinance returned no daily bars for {window} ({reason}).")


def _first_sentence(text: str, limit: int = 160) -> str:
    """The first sentence of a log message, on one line and at most ``limit`` characters."""
    text = " ".join(text.split())
    text = text.split(". ", 1)[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 1] + "…"
