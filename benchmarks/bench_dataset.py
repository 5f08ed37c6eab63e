"""Dataset building on the real volume, side by side with a vectorised pandas reference.

    .venv/bin/python benchmarks/bench_dataset.py [--repeat 3]      (or: make bench)

The corpus is the real volume: 20 tickers x 376 trading days of records (parsed from the
generated XML) with their daily prices. Reported, best of --repeat:

* charlie: ``charlie.dataset.build_rows`` — split assignment, one indicator pass per ticker,
  a binary search per record for its bar, and the full prompt and completion text.
* charlie's numbers alone: ``indicator_frame`` per ticker and the binary search that finds
  each record's bar, i.e. the same work as the reference, like for like.
* reference: the same indicators with one vectorised pandas pass per ticker and a
  ``merge_asof`` of the record dates onto the bars — numbers only, no text at all.
  Target: charlie within 1.5x of it. Both ratios are printed: numbers against numbers, and
  the whole build (which also writes ~1 kB of prompt and ~2.5 kB of completion per record)
  against the numbers-only reference.
* the whole ``charlie dataset`` command (start-up, prices, audit, card, save_to_disk).
  Target: < 3 s on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from charlie import dataset as core
from charlie.parsing import parse_files
from charlie.sample import SampleSpec, generate, render_prices_csv, render_xml
from charlie.snapshot import indicator_frame
from common import best_of, met

CHARLIE = str(Path(sys.executable).parent / "charlie")
SPEC = core.SplitSpec(dt.date(2023, 10, 24), dt.date(2024, 12, 31), 30, dt.date(2025, 1, 1),
                      dt.date(2025, 4, 24))  # fmt: skip


def make_corpus(work: Path) -> tuple[list[dict], dict[str, pd.DataFrame]]:
    spec = SampleSpec(tickers=20, detail="full", ipo_ticker=False)
    (work / "xml").mkdir()
    (work / "prices").mkdir()
    for sample in generate(spec):
        (work / "xml" / f"{sample.ticker}.xml").write_text(render_xml(sample, spec.seed))
        (work / "prices" / f"{sample.ticker}.csv").write_text(render_prices_csv(sample))
    records = parse_files(sorted((work / "xml").glob("*.xml"))).records
    (work / "records.jsonl").write_bytes(
        b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records)
    )
    frames = {
        p.stem: pd.read_csv(p, parse_dates=["date"])
        for p in sorted((work / "prices").glob("*.csv"))
    }
    return records, frames


def reference(records: list[dict], frames: dict[str, pd.DataFrame]) -> int:
    """One vectorised pandas pass per ticker, then merge_asof: the indicators, no text."""
    dates = pd.DataFrame({"ticker": [r["ticker"] for r in records],
                          "as_of": pd.to_datetime([r["as_of_date"] for r in records])})  # fmt: skip
    out = []
    for ticker, bars in frames.items():
        adj = bars["adj_close"]
        change = adj.diff()
        gain = change.clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
        loss = (-change).clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
        ind = pd.DataFrame({
            "date": bars["date"],
            "ret1": adj.pct_change(1), "ret5": adj.pct_change(5), "ret20": adj.pct_change(20),
            "sma20": adj.rolling(20).mean(), "ema20": adj.ewm(span=20, adjust=False).mean(),
            "rsi14": 100 - 100 / (1 + gain / loss),
            "vol20": adj.pct_change().rolling(20).std() * math.sqrt(252),
            "volume_ratio": bars["volume"] / bars["volume"].rolling(20).mean(),
            "high52": bars["high"].rolling(252).max(), "low52": bars["low"].rolling(252).min(),
        })  # fmt: skip
        mine = dates[dates["ticker"] == ticker].sort_values("as_of")
        out.append(pd.merge_asof(mine, ind, left_on="as_of", right_on="date"))
    return sum(len(o) for o in out)


def numbers_only(records: list[dict], frames: dict[str, pd.DataFrame]) -> int:
    """charlie's indicator pass and point-in-time lookup, without the text."""
    by_ticker: dict[str, list[str]] = {}
    for r in records:
        by_ticker.setdefault(r["ticker"], []).append(r["as_of_date"])
    found = 0
    for ticker, dates in by_ticker.items():
        frame = indicator_frame(frames[ticker])
        bar_days = frame["date"].to_numpy(dtype="datetime64[D]")
        positions = (
            np.searchsorted(bar_days, np.array(dates, dtype="datetime64[D]"), side="right") - 1
        )
        found += int((positions >= 0).sum())
    return found


def stage(work: Path) -> None:
    (work / "params.yaml").write_text(
        f"prices:\n  file_dir: {work / 'prices'}\n"
        f"dataset:\n  records: {work / 'records.jsonl'}\n  out: {work / 'ds'}\n"
        f"  card: {work / 'card.json'}\n"
    )
    env = {**os.environ, "CHARLIE_LOG_DIR": str(work / "logs")}
    subprocess.run([CHARLIE, "dataset", "--params", str(work / "params.yaml")], cwd=work,
                   env=env, check=True, capture_output=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-dataset-"))
    try:
        records, frames = make_corpus(work)

        def ours() -> int:
            rows, _, _ = core.build_rows(records, frames, SPEC, drop_outside=True)
            return sum(len(r) for r in rows.values())

        t_ours, n_ours = best_of(args.repeat, ours)
        t_numbers, n_numbers = best_of(args.repeat, numbers_only, records, frames)
        t_ref, n_ref = best_of(args.repeat, reference, records, frames)
        t_stage, _ = best_of(args.repeat, stage, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = t_ours / t_ref
    like = t_numbers / t_ref
    rows = [
        ("charlie build_rows (indicators + text + splits)", t_ours, f"({n_ours} rows)"),
        ("charlie indicators + lookup only (no text)", t_numbers, f"({n_numbers} rows)"),
        ("reference pandas pass + merge_asof (no text)", t_ref, f"({n_ref} rows)"),
    ]
    print(
        f"corpus: {len(frames)} tickers, {len(records)} records, "
        f"{sum(len(f) for f in frames.values())} bars; best of {args.repeat}, {os.cpu_count()} cores"
    )
    print(f"{'measurement':<50}{'seconds':>9}")
    for label, seconds, note in rows:
        print(f"{label:<50}{seconds:>9.3f}   {note}")
    print(
        f"{'ratio numbers / reference (like for like)':<50}{like:>9.2f}   target <= 1.5: {met(like <= 1.5)}"
    )
    print(
        f"{'ratio whole build / reference (text too)':<50}{ratio:>9.2f}   target <= 1.5: {met(ratio <= 1.5)}"
    )
    print(
        f"{'charlie dataset (whole process)':<50}{t_stage:>9.3f}   target < 3 s: {met(t_stage < 3)}"
    )


if __name__ == "__main__":
    main()
