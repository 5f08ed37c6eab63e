"""The offline ``file`` provider: a directory of per-ticker CSV or parquet price files.

``prices.file_dir`` is a local directory, read in place, or an ``s3://bucket/prefix/`` whose
objects are downloaded once per version (the listing's keys and ETags) into
``<cache_dir>/file/s3/<sha256>/`` and read from there (see charlie.sources), so a later run
with the same objects downloads nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from charlie.prices.base import PRICE_COLUMNS, NotAvailable, normalize_frame
from charlie.tickers import ticker_file

log = logging.getLogger("charlie.prices.files")


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
            raise NotAvailable(f"{path} lacks the column(s) {', '.join(missing)}")
        frame = normalize_frame(frame, start, end)
        if frame.empty:
            raise NotAvailable(f"{path} has no bar between {start} and {end}")
        frame.attrs["file_sha256"] = hashlib.sha256(data).hexdigest()
        return frame


def _read(data: bytes, suffix: str) -> pd.DataFrame:
    """A price file's frame, a CSV's dates parsed by the CSV reader: a third of the cost of
    parsing them afterwards. Dates it cannot parse stay text, for the validation to count."""
    if suffix == ".parquet":
        return pd.read_parquet(io.BytesIO(data))
    try:
        return pd.read_csv(io.BytesIO(data), parse_dates=["date"])
    except ValueError:  # no date column (named by the caller), or not a CSV (raised again)
        return pd.read_csv(io.BytesIO(data))
