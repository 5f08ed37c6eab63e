"""Parsed records (``charlie parse``'s records.jsonl): reading them, and the prices they need."""

from __future__ import annotations

import datetime as dt
import os
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from charlie.errors import CharlieError


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise CharlieError(f"records file {path} does not exist; run `charlie parse` first.")


def read_records(path: Path | str) -> list[dict[str, Any]]:
    """Records from a JSONL file, with one sentence if it is missing or empty."""
    path = Path(path)
    _require_file(path)
    records = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    if not records:
        raise CharlieError(f"records file {path} holds no record.")
    return records


class RecordColumns:
    """Records as four short columns (ticker, as_of_date, uid, action), each whole record
    fetched again only when asked for (:meth:`take`).

    What ``charlie dataset`` holds while it builds: a few short strings per record (tickers,
    dates and actions shared between records), instead of every record as a dict with its
    ~2.5 kB of reasoning and support, which at 500 tickers was about 1 GB. :func:`scan_records`
    reads them from records.jsonl (and reads a record's line back from the file when it is
    taken); :meth:`from_dicts` wraps records already in memory.
    """

    def __init__(
        self,
        tickers: list[str],
        dates: list[str],
        uids: list[str],
        actions: list[str],
        fetch: Callable[[Sequence[int]], Iterator[dict[str, Any]]],
    ) -> None:
        self.tickers, self.dates, self.uids, self.actions = tickers, dates, uids, actions
        self._fetch = fetch

    def __len__(self) -> int:
        return len(self.uids)

    def take(self, indices: Sequence[int]) -> Iterator[dict[str, Any]]:
        """The whole records at ``indices``, in that order, one at a time."""
        return self._fetch(indices)

    @classmethod
    def from_dicts(cls, records: Sequence[dict[str, Any]]) -> RecordColumns:
        """Columns over records in memory (``take`` hands back the dicts themselves)."""
        return cls(
            [r["ticker"] for r in records],
            [r["as_of_date"] for r in records],
            [r["uid"] for r in records],
            [r["action"] for r in records],
            lambda indices: (records[i] for i in indices),
        )


def _lines(handle: Any) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of each line of a binary file, split as ``bytes.splitlines`` splits."""
    offset = 0
    for raw in handle:
        if b"\r" in raw:  # a lone \r ends a line too, as bytes.splitlines has it
            for part in raw.splitlines(keepends=True):
                yield offset, part
                offset += len(part)
        else:
            yield offset, raw
            offset += len(raw)


def scan_records(path: Path | str) -> RecordColumns:
    """Records from a JSONL file as :class:`RecordColumns`: the same records, in the same
    order and with the same errors as :func:`read_records`, in a fraction of its memory.

    One pass reads each line once and keeps its place in the file; :meth:`RecordColumns.take`
    reads the lines it is asked for back from the file (which must not change meanwhile).
    """
    path = Path(path)
    _require_file(path)
    tickers: list[str] = []
    dates: list[str] = []
    uids: list[str] = []
    actions: list[str] = []
    offsets, sizes = array("q"), array("q")
    shared: dict[str, str] = {}  # one string object per distinct ticker, date and action
    share = shared.setdefault
    loads = orjson.loads
    with open(path, "rb") as handle:
        for number, (offset, line) in enumerate(_lines(handle), start=1):
            if not line.strip():
                continue
            try:
                record = loads(line)
                ticker, date = record["ticker"], record["as_of_date"]
                uid, action = record["uid"], record["action"]
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise CharlieError(_bad_line(path, number, exc)) from None
            tickers.append(share(ticker, ticker))
            dates.append(share(date, date))
            uids.append(uid)
            actions.append(share(action, action))
            offsets.append(offset)
            sizes.append(len(line))
    if not uids:
        raise CharlieError(f"records file {path} holds no record.")

    def fetch(indices: Sequence[int]) -> Iterator[dict[str, Any]]:
        with open(path, "rb") as handle:
            fd = handle.fileno()
            for i in indices:
                yield loads(os.pread(fd, sizes[i], offsets[i]))

    return RecordColumns(tickers, dates, uids, actions, fetch)


def _bad_line(path: Path, number: int, exc: Exception) -> str:
    """One sentence on a records.jsonl line that is not a record `charlie parse` writes."""
    if isinstance(exc, KeyError):
        what = f"has no {exc.args[0]!r} field"
    elif isinstance(exc, TypeError):
        what = "is not a JSON object"
    else:
        what = f"is not JSON ({exc})"
    return (f"records file {path} line {number} {what}; records.jsonl is `charlie parse`'s "
            "output: parse the theses again rather than editing it.")  # fmt: skip


def wanted_ranges(
    records: Iterable[dict[str, Any]] | RecordColumns, history_days: int, forward_days: int
) -> dict[str, tuple[dt.date, dt.date]]:
    """Each ticker's date range: its records widened by the history and forward margins."""
    if isinstance(records, RecordColumns):
        pairs: Iterable[tuple[str, str]] = zip(records.tickers, records.dates, strict=True)
    else:
        pairs = ((record["ticker"], record["as_of_date"]) for record in records)
    spans: dict[str, list[str]] = {}
    for ticker, date in pairs:
        span = spans.setdefault(ticker, [date, date])
        span[0] = min(span[0], date)
        span[1] = max(span[1], date)
    before, after = dt.timedelta(days=history_days), dt.timedelta(days=forward_days)
    return {
        ticker: (dt.date.fromisoformat(a) - before, dt.date.fromisoformat(b) + after)
        for ticker, (a, b) in sorted(spans.items())
    }
