"""Parsed records (``charlie parse``'s records.jsonl): reading them, and the prices they need."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson

from charlie.errors import CharlieError


def read_records(path: Path | str) -> list[dict[str, Any]]:
    """Records from a JSONL file, with one sentence if it is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise CharlieError(f"records file {path} does not exist; run `charlie parse` first.")
    records = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    if not records:
        raise CharlieError(f"records file {path} holds no record.")
    return records


def wanted_ranges(
    records: list[dict[str, Any]], history_days: int, forward_days: int
) -> dict[str, tuple[dt.date, dt.date]]:
    """Each ticker's date range: its records widened by the history and forward margins."""
    spans: dict[str, list[str]] = {}
    for record in records:
        span = spans.setdefault(record["ticker"], [record["as_of_date"], record["as_of_date"]])
        span[0] = min(span[0], record["as_of_date"])
        span[1] = max(span[1], record["as_of_date"])
    before, after = dt.timedelta(days=history_days), dt.timedelta(days=forward_days)
    return {
        ticker: (dt.date.fromisoformat(a) - before, dt.date.fromisoformat(b) + after)
        for ticker, (a, b) in sorted(spans.items())
    }
