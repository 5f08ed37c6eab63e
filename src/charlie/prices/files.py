"""The offline ``file`` provider: a directory of per-ticker CSV or parquet price files.

Column names are matched without regard to case, surrounding spaces, or spaces and hyphens
inside them, so a Yahoo Finance download (``Date,Open,High,Low,Close,Adj Close,Volume``) and
an eodhd CSV export (``adjusted_close``) read as they are.

``prices.file_dir`` is a local directory, read in place, or an ``s3://bucket/prefix/`` whose
objects are downloaded once per version (the listing's keys and ETags) into
``<cache_dir>/file/s3/<sha256>/`` and read from there (see charlie.sources), so a later run
with the same objects downloads nothing.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from charlie.prices.base import PRICE_COLUMNS, NotAvailable, normalize_frame
from charlie.prices.validate import describe
from charlie.tickers import ticker_file

log = logging.getLogger("charlie.prices.files")

# Other names for adj_close, once canonical (lower case, spaces and hyphens as underscores).
ALIASES = {"adjusted_close": "adj_close", "adjclose": "adj_close"}


def from_params(params: Any, env: Mapping[str, str]) -> FileProvider:
    """The ``file`` provider of the ``prices`` section: ``prices.file_dir``, never cached.

    An ``s3://`` file_dir is materialised under ``<cache_dir>/file/`` first (AWS_* from
    ``env``); its source and version are logged and kept as the provider's ``source``.
    """
    from charlie import sources

    if not sources.is_s3(params.file_dir):
        return FileProvider(params.file_dir)
    directory, source = sources.cached_source(
        params.file_dir, Path(params.cache_dir) / "file", env=env
    )
    log.info("file prices from %s, read from %s", source.describe(), directory)
    provider = FileProvider(directory)
    provider.source = source
    return provider


class FileProvider:
    """Reads ``<directory>/<TICKER>.parquet`` or ``<TICKER>.csv`` (DESIGN.md columns)."""

    name = "file"

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.source: Any = None  # a charlie.sources.Source when file_dir was remote

    def fetch(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        """Bars for ``ticker`` from its file, or ``NotAvailable`` when there is none.

        The file is read once: its bytes are parsed and their sha256 is kept in
        ``frame.attrs["file_sha256"]``, what the dataset's input hash is made of.
        """
        for suffix in (".parquet", ".csv"):
            path = ticker_file(self.directory, ticker, suffix)
            if path.is_file():
                break
        else:
            raise NotAvailable(f"no {ticker}.csv or {ticker}.parquet in {self.directory}")
        try:
            data = path.read_bytes()
            frame = _read(data, suffix)
        except (OSError, ValueError) as exc:
            raise NotAvailable(f"{path} cannot be read: {exc}") from None
        missing = [c for c in PRICE_COLUMNS if c not in frame.columns and c != "adj_close"]
        if missing:
            found = ", ".join(map(str, frame.columns))[:160] or "nothing"
            hint = "; a CSV is comma-separated, with a header row" if suffix == ".csv" else ""
            raise NotAvailable(
                f"{path} lacks the column(s) {', '.join(missing)} (its columns: {found}{hint})"
            )
        frame = normalize_frame(frame, start, end)
        if frame.empty:
            dropped = describe(Counter(frame.attrs["dropped"]))
            raise NotAvailable(
                f"{path} has no bar between {start} and {end}"
                + (f" that passes validation: {dropped}" if dropped else "")
            )
        frame.attrs["file_sha256"] = hashlib.sha256(data).hexdigest()
        return frame


def canonical(name: Any) -> str:
    """A column's name as the contract spells it: ``" Adj Close"`` -> ``"adj_close"``."""
    name = re.sub(r"[\s-]+", "_", str(name).strip().lower())
    return ALIASES.get(name, name)


def _read(data: bytes, suffix: str) -> pd.DataFrame:
    """A price file's frame with canonical column names, a CSV's dates parsed by the CSV
    reader (a third of the cost of parsing them afterwards). Dates it cannot parse stay text,
    for the validation to count.

    Raises:
        ValueError: Two columns have one canonical name, or the bytes are not a table.
    """
    if suffix == ".parquet":
        frame = pd.read_parquet(io.BytesIO(data))
    else:
        first = data.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace")
        header = next(csv.reader([first]), [])
        dates = [name for name in header if canonical(name) == "date"][:1]
        try:
            frame = pd.read_csv(io.BytesIO(data), parse_dates=dates)
        except ValueError:  # a header the csv module and pandas read apart (raised again)
            frame = pd.read_csv(io.BytesIO(data))
    names = [canonical(c) for c in frame.columns]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"more than one column is named {', '.join(twice)}")
    frame.columns = names
    return frame
