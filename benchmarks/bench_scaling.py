"""How parse and dataset scale with the corpus: the real volume at 20, 100 and 500 tickers.

    .venv/bin/python benchmarks/bench_scaling.py [--sizes 20,100,500] [--repeat 3]  (or: make bench)

For each size, ``charlie sample --tickers N --detail full --no-ipo-ticker`` writes a corpus
(376 theses of ~2.5 kB per ticker, and their prices) into a temporary directory; then the
whole ``charlie parse`` and ``charlie dataset`` commands (the file price provider, on the
generated prices) run on it under GNU time, which reports each command's wall clock, CPU time
(user + system) and peak RSS. Parse runs --repeat times and its medians are shown (it is cheap
next to generating the corpus); dataset runs once. GNU time's peak is its child's own
ru_maxrss: the high-water mark Linux carries across exec is time's (a few MB), not that of a
large Python parent.

Parse's ms/MB includes the process's start-up, which small corpora feel most. At each size,
parse's in-process work (``parse_files`` and the records written out) is also timed alone and
against bench_parse's plain iterparse loop writing the same fields, interleaved, as CPU medians
(as bench_parse does at 20 tickers): its "in-proc ms/MB", which start-up does not touch and
which a linear stage keeps flat, and its "vs loop" ratio. Targets: in-process ms/MB at the
largest size within 1.2x of the smallest's (parse was 24-32 ms/MB up to 200 tickers and 48 at
500), the ratio to the loop <= 1.2 at every size, and parse's peak RSS under 200 MB at every
size (the records stream to disk). Dataset is printed without a target. At 500 tickers the
corpus is ~450 MB of XML: generating it and building its dataset take minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench_parse import RATIO_TARGET, charlie_in_process, reference_loop
from common import interleaved, met

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]  # the commands run here: configs/ is read from it
GNU_TIME = "/usr/bin/time"
LINEAR_TARGET = 1.2
RSS_TARGET_MB = 200


@dataclass(frozen=True)
class Run:
    """One command's figures, from GNU time."""

    wall: float  # seconds
    cpu: float  # seconds, user + system
    peak_mb: float  # peak resident set size


def timed(argv: list[str], work: Path) -> Run:
    """Run ``argv`` under GNU time (logs and figures in ``work``); its wall, CPU and peak RSS."""
    figures = work / "time.txt"
    env = {**os.environ, "CHARLIE_LOG_DIR": str(work / "logs")}
    done = subprocess.run([GNU_TIME, "-f", "%e %U %S %M", "-o", str(figures), *argv], cwd=REPO,
                          env=env, capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"{' '.join(argv[:2])} failed ({done.returncode}): {done.stderr[-800:]}")
    wall, user, system, peak_kb = figures.read_text().split()[-4:]
    return Run(float(wall), float(user) + float(system), int(peak_kb) / 1024)


def median_run(runs: list[Run]) -> Run:
    """Each figure's median over ``runs``."""
    names = ("wall", "cpu", "peak_mb")
    return Run(*(statistics.median(getattr(run, name) for run in runs) for name in names))


def measure(tickers: int, repeat: int, work: Path) -> dict:
    """Generate a corpus of ``tickers`` tickers in ``work``, then parse it and build its dataset."""
    corpus = work / "corpus"
    (work / "params.yaml").write_text(
        f"parse:\n  input_dir: {corpus / 'xml'}\n  out: {work / 'records.jsonl'}\n"
        f"  rejects: {work / 'rejects.jsonl'}\n  report: {work / 'parse_report.json'}\n"
        f"prices:\n  providers: [file]\n  file_dir: {corpus / 'prices'}\n"
        f"dataset:\n  records: {work / 'records.jsonl'}\n  out: {work / 'ds'}\n"
        f"  card: {work / 'card.json'}\n"
    )
    params = ["--params", str(work / "params.yaml")]
    timed([str(BIN / "charlie"), "sample", *params, "--tickers", str(tickers), "--detail", "full",
           "--no-ipo-ticker", "--out-dir", str(corpus)], work)  # fmt: skip
    megabytes = sum(p.stat().st_size for p in (corpus / "xml").glob("*.xml")) / 1e6
    parse = median_run(
        [timed([str(BIN / "charlie"), "parse", *params], work) for _ in range(repeat)]
    )
    theses = json.loads((work / "parse_report.json").read_text())["totals"]["theses_seen"]
    paths = sorted((corpus / "xml").glob("*.xml"))
    ours, loop = interleaved(
        repeat,
        lambda: charlie_in_process(paths, work / "a.jsonl"),
        lambda: reference_loop(paths, work / "b.jsonl"),
    )
    dataset = timed([str(BIN / "charlie"), "dataset", *params], work)
    return {"tickers": tickers, "theses": theses, "mb": megabytes, "parse": parse,
            "in_process": ours.cpu * 1e3 / megabytes, "vs_loop": ours.cpu / loop.cpu,
            "dataset": dataset}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20,100,500", help="ticker counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="parse runs per size (medians)")
    args = parser.parse_args()
    sizes = sorted({int(n) for n in args.sizes.split(",")})
    if not os.access(GNU_TIME, os.X_OK):
        raise SystemExit(
            f"bench_scaling needs GNU time at {GNU_TIME} (Debian: apt-get install time)"
        )

    rows = []
    for tickers in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"bench-scaling-{tickers}-"))
        try:
            rows.append(measure(tickers, args.repeat, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    print(f"charlie sample --tickers N --detail full --no-ipo-ticker, then charlie parse "
          f"(medians of {args.repeat} runs) and charlie dataset; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'':>7}{'':>8}{'XML':>8}{'parse':>9}{'':>8}{'parse':>8}{'in-proc':>8}{'parse':>9}"
          f"{'vs':>8}{'dataset':>9}{'':>8}{'dataset':>9}")  # fmt: skip
    print(f"{'tickers':>7}{'theses':>8}{'MB':>8}{'CPU s':>9}{'wall s':>8}{'ms/MB':>8}{'ms/MB':>8}"
          f"{'peak MB':>9}{'loop':>8}{'CPU s':>9}{'wall s':>8}{'peak MB':>9}")  # fmt: skip
    for row in rows:
        parse, dataset = row["parse"], row["dataset"]
        print(f"{row['tickers']:>7}{row['theses']:>8}{row['mb']:>8.1f}{parse.cpu:>9.2f}"
              f"{parse.wall:>8.2f}{parse.cpu * 1e3 / row['mb']:>8.1f}{row['in_process']:>8.1f}"
              f"{parse.peak_mb:>9.0f}{row['vs_loop']:>8.2f}{dataset.cpu:>9.2f}{dataset.wall:>8.2f}"
              f"{dataset.peak_mb:>9.0f}")  # fmt: skip
    if len(rows) >= 2:
        growth = rows[-1]["in_process"] / rows[0]["in_process"]
        print(f"parse's in-process CPU ms/MB, largest size / smallest: {growth:.2f} "
              f"(linear: <= {LINEAR_TARGET})  {met(growth <= LINEAR_TARGET)}")  # fmt: skip
    worst = max(row["vs_loop"] for row in rows)
    print(f"parse in process / plain iterparse loop, worst size: {worst:.2f} "
          f"(<= {RATIO_TARGET} at every size)  {met(worst <= RATIO_TARGET)}")  # fmt: skip
    peak = max(row["parse"].peak_mb for row in rows)
    print(
        f"parse peak RSS, largest: {peak:.0f} MB (< {RSS_TARGET_MB})  {met(peak < RSS_TARGET_MB)}"
    )


if __name__ == "__main__":
    main()
