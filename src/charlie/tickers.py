"""What a ticker may be, and the files named after one.

A ticker comes from a thesis file (its root's ``ticker`` attribute, or the file name), from
``--tickers`` or from a records file, and names files: ``<cache>/<provider>/<TICKER>.parquet``,
``<file_dir>/<TICKER>.csv``. So it is checked where it enters and again where a path is built
from it: a ticker is never a path.
"""

from __future__ import annotations

import re
from pathlib import Path

from charlie.errors import CharlieError

TICKER = re.compile(r"[A-Z0-9.\-_^=]{1,20}")
"""1-20 upper-case letters, digits and ``. - _ ^ =``: exchange tickers (``BRK.B``, ``ACME.US``),
indices (``^GSPC``) and currency pairs (``EURUSD=X``); no slash, no space, not only dots."""
RULE = "1-20 letters, digits and . - _ ^ = (e.g. BRK.B, ^GSPC, EURUSD=X)"


def valid_ticker(ticker: str) -> bool:
    """Whether ``ticker`` (upper case) matches ``TICKER``."""
    return bool(TICKER.fullmatch(ticker)) and set(ticker) != {"."}


def require_tickers(tickers: list[str], where: str) -> None:
    """One sentence naming the tickers from ``where`` that are not tickers."""
    bad = [t for t in tickers if not valid_ticker(t)]
    if bad:
        shown = ", ".join(repr(t[:40]) for t in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise CharlieError(f"{where}: {len(bad)} invalid ticker(s) {shown}; a ticker is {RULE}.")


def ticker_file(directory: Path, ticker: str, suffix: str) -> Path:
    """``directory/<ticker><suffix>``, refused unless it is a valid ticker's file inside it."""
    path = directory / f"{ticker}{suffix}"
    if not valid_ticker(ticker) or path.resolve().parent != directory.resolve():
        raise CharlieError(
            f"refusing the file {path} for ticker {ticker[:40]!r}: a ticker is {RULE}."
        )
    return path
