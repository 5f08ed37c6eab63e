"""The offline ``file`` provider: a directory of per-ticker CSV or parquet price files."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from charlie.prices.base import PRICE_COLUMNS, NotAvailable, normalize_frame


def from_params(params: Any, env: Mapping[str, str]) -> FileProvider:
    """The ``file`` provider of the ``prices`` section: ``prices.file_dir``, never cached."""
    return FileProvider(params.file_dir)


class FileProvider:
    """Reads ``<directory>/<TICKER>.parquet`` or ``<TICKER>.csv`` (DESIGN.md columns)."""

    name = "file"

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def fetch(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        """Bars for ``ticker`` from its file, or ``NotAvailable`` when there is none."""
        for suffix in (".parquet", ".csv"):
            path = self.directory / f"{ticker}{suffix}"
            if path.is_file():
                break
        else:
            raise NotAvailable(f"no {ticker}.csv or {ticker}.parquet in {self.directory}")
        try:
            frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
        except (OSError, ValueError) as exc:
            raise NotAvailable(f"{path} cannot be read: {exc}") from None
        missing = [c for c in PRICE_COLUMNS if c not in frame.columns and c != "adj_close"]
        if missing:
            raise NotAvailable(f"{path} lacks the column(s) {', '.join(missing)}")
        frame = normalize_frame(frame, start, end)
        if frame.empty:
            raise NotAvailable(f"{path} has no bar between {start} and {end}")
        return frame
