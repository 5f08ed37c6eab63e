"""A parquet cache per ticker in front of a network provider.

``<cache_dir>/<provider>[-v<cache_version>]/<TICKER>.parquet`` holds the bars and, in the
file's metadata, the date ranges already asked for (including days that had no bar, such as holidays), so a later run
fetches only the ranges it lacks and a full hit needs no network and no key. Writes are
atomic; a file that cannot be read back is reported, deleted and refetched.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from charlie.io import atomic_outputs
from charlie.prices.base import PRICE_COLUMNS, NotAvailable, PriceProvider, normalize_frame
from charlie.tickers import ticker_file

log = logging.getLogger("charlie.prices.cache")
META_KEY = b"charlie.coverage"
ONE_DAY = dt.timedelta(days=1)

Range = tuple[dt.date, dt.date]


def missing_ranges(covered: list[Range], start: dt.date, end: dt.date) -> list[Range]:
    """The parts of ``[start, end]`` (inclusive) that no covered range contains."""
    gaps, cursor = [], start
    for lo, hi in sorted(covered):
        if hi < cursor:
            continue
        if lo > end:
            break
        if lo > cursor:
            gaps.append((cursor, min(lo - ONE_DAY, end)))
        cursor = max(cursor, hi + ONE_DAY)
        if cursor > end:
            return gaps
    if cursor <= end:
        gaps.append((cursor, end))
    return gaps


def merge_ranges(ranges: list[Range]) -> list[Range]:
    """Union of inclusive date ranges, adjacent ones joined."""
    merged: list[Range] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + ONE_DAY:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


@dataclass
class CacheStats:
    """What the last fetch took from the cache and from the network."""

    cached_rows: int = 0
    fetched_rows: int = 0
    fetched_ranges: list[Range] = field(default_factory=list)
    corrupt: bool = False


class CachedProvider:
    """Wraps a provider with the per-ticker parquet cache; same interface as the provider."""

    def __init__(
        self,
        inner: PriceProvider,
        directory: Path | str,
        *,
        today: dt.date | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        # A provider whose answers change meaning (yfinance: raw closes since version 2, where
        # version 1 cached split-adjusted ones) bumps its cache_version: old files are not read.
        version = int(getattr(inner, "cache_version", 1))
        self.directory = Path(directory) / (inner.name + (f"-v{version}" if version > 1 else ""))
        self.today = today or dt.date.today()
        self.last = CacheStats()

    def path(self, ticker: str) -> Path:
        return ticker_file(self.directory, ticker, ".parquet")

    def load(self, ticker: str) -> tuple[pd.DataFrame, list[Range]] | None:
        """The cached bars and covered ranges, or None when absent or unreadable."""
        path = self.path(ticker)
        if not path.is_file():
            return None
        try:
            table = pq.read_table(path)
            meta = json.loads((table.schema.metadata or {})[META_KEY])
            covered = [(dt.date.fromisoformat(a), dt.date.fromisoformat(b)) for a, b in meta]
            frame = table.to_pandas()
            if list(frame.columns) != list(PRICE_COLUMNS):
                raise ValueError(f"columns {list(frame.columns)}")
        except Exception as exc:  # any unreadable cache is refetched, never trusted
            log.warning("price cache %s is corrupt (%s); refetching", path, type(exc).__name__)
            path.unlink(missing_ok=True)
            self.last.corrupt = True
            return None
        return frame, covered

    def store(self, ticker: str, frame: pd.DataFrame, covered: list[Range]) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        meta = json.dumps([[a.isoformat(), b.isoformat()] for a, b in merge_ranges(covered)])
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: meta})
        with atomic_outputs(self.path(ticker)) as (tmp,):
            pq.write_table(table, tmp)

    def fetch(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        """Cached bars plus whatever the provider returns for the ranges not yet covered.

        Raises what the wrapped provider raises, except that an empty answer for a gap is
        remembered as covered when other bars exist (a holiday, or days before a listing).
        """
        self.last = CacheStats()
        loaded = self.load(ticker)
        frame, covered = loaded if loaded else (pd.DataFrame(columns=list(PRICE_COLUMNS)), [])
        parts = [frame] if len(frame) else []
        self.last.cached_rows = int(
            ((frame["date"] >= pd.Timestamp(start)) & (frame["date"] <= pd.Timestamp(end))).sum()
        ) if len(frame) else 0  # fmt: skip
        gaps = missing_ranges(covered, start, end)
        for lo, hi in gaps:
            try:
                got = self.inner.fetch(ticker, lo, hi)
            except NotAvailable:
                if not parts:
                    raise
                got = None
            if got is not None and len(got):
                parts.append(got)
                self.last.fetched_rows += len(got)
            self.last.fetched_ranges.append((lo, hi))
            # Days up to yesterday are final; a range reaching today stays open so the
            # next run asks again for bars that did not exist yet.
            covered.append((lo, min(hi, self.today - ONE_DAY)))
        covered = [(a, b) for a, b in covered if a <= b]
        dropped = Counter()
        for part in parts[1 if len(frame) else 0 :]:
            dropped.update(part.attrs.get("dropped", {}))
        # a bar fetched again (the open range up to today) replaces the cached one
        merged = pd.concat(parts).drop_duplicates("date", keep="last") if parts else frame
        merged = normalize_frame(merged) if parts else frame
        if gaps:
            self.store(ticker, merged, covered)
        result = normalize_frame(merged, start, end) if len(merged) else merged
        result.attrs["dropped"] = dict(dropped)
        if result.empty:
            raise NotAvailable(f"{self.name} has no bar for {ticker} between {start} and {end}")
        return result
