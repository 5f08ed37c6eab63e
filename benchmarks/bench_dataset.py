"""Dataset building on the real volume, side by side with a vectorised pandas reference.

    .venv/bin/python benchmarks/bench_dataset.py [--repeat 5]      (or: make bench)

The corpus is the real volume: 20 tickers x 376 trading days of records (parsed from the
generated XML) with their daily prices. Reported, the median of --repeat interleaved rounds
(A B C A B C ...), wall clock and CPU time (user + system, a subprocess's included):

* charlie: ``charlie.dataset.build_tables`` — split assignment, one indicator pass per
  ticker, a binary search per record for its bar, and the full prompt and completion text.
* charlie's numbers alone: ``indicator_frame`` per ticker, the binary search that finds each
  record's bar, and the gather of that bar's 16 values (bar, returns, SMA20, EMA20, RSI14,
  volatility, volume ratio, 52-week range) into one row per record.
* reference: the same 16 values per record from one vectorised pandas pass per ticker (rolling
  windows, ``ewm`` seeded as Wilder and the charting EMA are) and a ``merge_asof`` of the
  record dates onto the bars. Both sides' values are checked equal (to 1e-9 relative: pandas'
  rolling sums round differently) before anything is timed, so the ratio compares the same
  work. Target: numbers within 1.5x of the reference. The whole build (which also writes
  ~1 kB of prompt and ~2.5 kB of completion per record, and assigns the splits) is printed
  against the same reference with no target, since the reference renders no text: beside
  it, the share of the build's CPU time the text and splits take.
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
from charlie.indicators import RSI_WINDOW, SMA_WINDOW, VOLATILITY_WINDOW, VOLUME_WINDOW
from charlie.parsing import parse_files
from charlie.sample import SampleSpec, generate, render_prices_csv, render_xml
from charlie.snapshot import EMA_SPAN, YEAR_WINDOW, indicator_frame
from common import interleaved, met

CHARLIE = str(Path(sys.executable).parent / "charlie")
REPO = Path(__file__).resolve().parents[1]  # the stage runs here: configs/ is read from it
NUMBERS = ["open", "high", "low", "close", "volume", "sessions", "ret1", "ret5", "ret20", "sma20",
           "ema20", "rsi14", "volatility20", "volume_ratio", "high52", "low52"]  # fmt: skip
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


def seeded_ewm(values: pd.Series, n: int, alpha: float) -> pd.Series:
    """``ewm(adjust=False)`` seeded with the mean of the first ``n`` values (NaN before)."""
    seeded = values.copy()
    seeded.iloc[: n - 1] = np.nan
    if len(values) >= n:
        seeded.iloc[n - 1] = values.iloc[:n].mean()
    return seeded.ewm(alpha=alpha, adjust=False).mean()


def reference(records: list[dict], frames: dict[str, pd.DataFrame]) -> np.ndarray:
    """One vectorised pandas pass per ticker, then merge_asof: each record's values, no text."""
    dates = pd.DataFrame({"row": np.arange(len(records)),
                          "ticker": [r["ticker"] for r in records],
                          "as_of": pd.to_datetime([r["as_of_date"] for r in records])
                                     .astype("datetime64[ns]")})  # fmt: skip
    out = np.full((len(records), len(NUMBERS)), np.nan)
    for ticker, bars in frames.items():
        adj, close, volume = bars["adj_close"], bars["close"], bars["volume"]
        to_raw, basis = close / adj, adj / close
        change = adj.diff()
        gain = seeded_ewm(change.clip(lower=0).iloc[1:], RSI_WINDOW, 1 / RSI_WINDOW)
        loss = seeded_ewm((-change).clip(lower=0).iloc[1:], RSI_WINDOW, 1 / RSI_WINDOW)
        rsi = (100 - 100 / (1 + gain / loss)).where(loss != 0, 100.0).where(gain.notna())
        ind = pd.DataFrame({
            "date": bars["date"].astype("datetime64[ns]"),
            "open": bars["open"], "high": bars["high"], "low": bars["low"], "close": close,
            "volume": volume, "sessions": np.arange(1, len(bars) + 1),
            "ret1": adj.pct_change(1), "ret5": adj.pct_change(5), "ret20": adj.pct_change(20),
            "sma20": adj.rolling(SMA_WINDOW).mean() * to_raw,
            "ema20": seeded_ewm(adj, EMA_SPAN, 2 / (EMA_SPAN + 1)) * to_raw,
            "rsi14": rsi.reindex(bars.index),
            "volatility20": adj.pct_change().rolling(VOLATILITY_WINDOW).std() * math.sqrt(252),
            "volume_ratio": volume / volume.rolling(VOLUME_WINDOW).mean(),
            "high52": (bars["high"] * basis).rolling(YEAR_WINDOW).max() * to_raw,
            "low52": (bars["low"] * basis).rolling(YEAR_WINDOW).min() * to_raw,
        })  # fmt: skip
        mine = dates[dates["ticker"] == ticker].sort_values("as_of")
        merged = pd.merge_asof(mine, ind, left_on="as_of", right_on="date")
        out[merged["row"].to_numpy()] = merged[NUMBERS].to_numpy(dtype="float64")
    return out


def numbers_only(records: list[dict], frames: dict[str, pd.DataFrame]) -> np.ndarray:
    """charlie's indicator pass, point-in-time lookup and gather: each record's values."""
    by_ticker: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_ticker.setdefault(r["ticker"], []).append(i)
    out = np.full((len(records), len(NUMBERS)), np.nan)
    for ticker, rows in by_ticker.items():
        frame = indicator_frame(frames[ticker])
        bar_days = frame["date"].to_numpy(dtype="datetime64[D]")
        wanted = np.array([records[i]["as_of_date"] for i in rows], dtype="datetime64[D]")
        positions = np.searchsorted(bar_days, wanted, side="right") - 1
        found = positions >= 0
        out[np.asarray(rows)[found]] = frame[NUMBERS].to_numpy(dtype="float64")[positions[found]]
    return out


def check_same(ours: np.ndarray, ref: np.ndarray) -> None:
    """Stop unless both sides found the same values for every record (NaN where missing)."""
    for j, name in enumerate(NUMBERS):
        np.testing.assert_allclose(ours[:, j], ref[:, j], rtol=1e-9, atol=1e-12,
                                   equal_nan=True, err_msg=f"{name} differs")  # fmt: skip


def stage(work: Path) -> None:
    (work / "params.yaml").write_text(
        f"prices:\n  file_dir: {work / 'prices'}\n"
        f"dataset:\n  records: {work / 'records.jsonl'}\n  out: {work / 'ds'}\n"
        f"  card: {work / 'card.json'}\n"
    )
    env = {**os.environ, "CHARLIE_LOG_DIR": str(work / "logs")}
    subprocess.run([CHARLIE, "dataset", "--params", str(work / "params.yaml")], cwd=REPO,
                   env=env, check=True, capture_output=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds (medians kept)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-dataset-"))
    try:
        records, frames = make_corpus(work)
        check_same(numbers_only(records, frames), reference(records, frames))

        def ours() -> int:
            rows, _, _ = core.build_tables(records, frames, SPEC, drop_outside=True)
            return sum(t.num_rows for t in rows.values())

        measured = [(m.wall, m.cpu, m.value) for m in interleaved(
            args.repeat, ours, lambda: numbers_only(records, frames),
            lambda: reference(records, frames), lambda: stage(work))]  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (t_ours, c_ours, n_ours), (t_numbers, c_numbers, _), (t_ref, c_ref, _), *_ = measured
    t_stage, c_stage, _ = measured[3]
    like, ratio = c_numbers / c_ref, c_ours / c_ref
    rows = [
        ("charlie build_tables (indicators + text + splits)", t_ours, c_ours, f"({n_ours} rows)"),
        ("charlie indicators + lookup + gather (no text)", t_numbers, c_numbers, f"({len(records)} rows, {len(NUMBERS)} values)"),
        ("reference pandas pass + merge_asof (no text)", t_ref, c_ref, "(the same values: checked)"),
    ]  # fmt: skip
    print(
        f"corpus: {len(frames)} tickers, {len(records)} records, "
        f"{sum(len(f) for f in frames.values())} bars; median of {args.repeat} interleaved "
        f"rounds, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'measurement':<52}{'wall s':>8}{'cpu s':>8}")
    for label, wall, cpu, note in rows:
        print(f"{label:<52}{wall:>8.3f}{cpu:>8.3f}   {note}")
    print(f"{'ratio numbers / reference (like for like, cpu)':<52}{like:>16.2f}   "
          f"target <= 1.5: {met(like <= 1.5)}")  # fmt: skip
    text = max(c_ours - c_numbers, 0.0) / c_ours
    print(f"{'ratio whole build / reference (text too, cpu)':<52}{ratio:>16.2f}   "
          f"no target: the reference writes no text ({text:.0%} of the build is text "
          "and splits)")  # fmt: skip
    print(f"{'charlie dataset (whole process)':<52}{t_stage:>8.3f}{c_stage:>8.3f}   "
          f"target < 3 s wall: {met(t_stage < 3)}")  # fmt: skip


if __name__ == "__main__":
    main()
