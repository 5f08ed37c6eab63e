"""Parse speed on the real volume, side by side with a plain lxml iterparse loop.

    .venv/bin/python benchmarks/bench_parse.py [--corpus DIR] [--repeat 7]     (or: make bench)

The corpus is the real volume (20 tickers x 376 trading days, ~2.5 kB per thesis, ~19 MB),
generated into a temporary directory unless --corpus names one. Each measurement runs its
calls interleaved (charlie, reference, charlie, reference, ...) for --repeat rounds and
reports the median wall-clock and the median CPU time of each; targets are judged on CPU time,
which a busy machine's waits for a core do not inflate (wall-clock is printed beside it):

* in-process: charlie's parse_files + its records written out (``write_records``), against a
  plain ``lxml.etree.iterparse`` loop that writes the same record fields with the same
  serialiser but does no hardening, normalisation, validation or accounting.
  Target: CPU ratio <= 1.2.
* process: the whole ``charlie parse`` command (start-up, parse, atomic writes, report), and
  ``charlie --help``, interleaved with each other. Targets: < 0.6 s and < 0.3 s on 2 cores.
* peak memory: the whole ``charlie parse`` process's peak RSS on the corpus (1x) and on ten
  copies of it (10x, each copy's tickers renamed, so no thesis collapses into another), with
  the reference loop's at 1x beside it. Target: under 200 MB whatever the corpus size (the
  records stream to disk; memory holds a few numbers per ticker and date).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
from lxml import etree

from charlie.parsing import parse_files
from charlie.sample import SampleSpec, generate, render_xml
from common import interleaved, met

CHARLIE = str(Path(sys.executable).parent / "charlie")


def make_corpus(directory: Path) -> None:
    spec = SampleSpec(tickers=20, detail="full", ipo_ticker=False)
    for sample in generate(spec):
        (directory / f"{sample.ticker}.xml").write_text(render_xml(sample, spec.seed))


def charlie_in_process(paths: list[Path], out: Path) -> int:
    result = parse_files(paths)
    with open(out, "wb") as handle:
        result.write_records(handle)
    return result.n_records


def reference_loop(paths: list[Path], out: Path) -> int:
    """What a one-off script would do: iterparse, read the children, dump a dict."""
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    chunks = []
    for path in paths:
        ticker = path.stem
        for _, elem in etree.iterparse(str(path), tag="thesis"):
            fields = {child.tag: (child.text or "").strip() for child in elem}
            date = fields.get("as-of-date", "")
            record = {
                "uid": f"{ticker}-{date}",
                "ticker": ticker,
                "as_of_date": date,
                "action": fields.get("action", "").upper(),
                "reasoning": fields.get("reasoning", ""),
                "support": fields.get("support", ""),
                "source_file": path.name,
                "source_line": elem.sourceline,
            }
            chunks.append(dumps(record, option=newline))
            elem.clear()
    out.write_bytes(b"".join(chunks))
    return len(chunks)


def run_process(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "CHARLIE_LOG_DIR": str(cwd / "logs")}
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)


RSS_TARGET_MB = 200
RATIO_TARGET = 1.2


_MEASURED = """
import sys, runpy
code = sys.argv.pop(1)
exec(code)
with open("/proc/self/status") as status:  # the peak of this process since its exec
    print(next(l.split()[1] for l in status if l.startswith("VmHWM:")), file=sys.stderr)
"""


def peak_rss_mb(code: str, argv: list[str], cwd: Path) -> float:
    """Peak resident memory (VmHWM, MB) of a fresh Python process that runs ``code``.

    Read inside the child: getrusage's maxrss would count the parent's pages from before the
    child's exec (Linux carries the high-water mark across it).
    """
    env = {
        **os.environ,
        "CHARLIE_LOG_DIR": str(cwd / "logs"),
        "PYTHONPATH": str(Path(__file__).parent),
    }
    done = subprocess.run([sys.executable, "-c", _MEASURED, code, *argv], cwd=cwd, env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"{code[:40]} failed ({done.returncode}): {done.stderr[-500:]}")
    return int(done.stderr.strip().splitlines()[-1]) / 1024  # kB


def tenfold(corpus: Path, out: Path) -> None:
    """Ten copies of every file, each with its tickers renamed (ACME -> ACME0 ... ACME9)."""
    out.mkdir()
    for path in sorted(corpus.glob("*.xml")):
        data = path.read_bytes()
        ticker = path.stem.upper().encode()
        for i in range(10):
            renamed = data.replace(
                b'ticker="' + ticker + b'"', b'ticker="' + ticker + b"%d" % i + b'"'
            )
            (out / f"{path.stem}{i}.xml").write_bytes(renamed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="directory of *.xml (default: generate)")
    parser.add_argument("--repeat", type=int, default=7, help="interleaved rounds (medians)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-parse-"))
    try:
        corpus = args.corpus or work / "corpus"
        if args.corpus is None:
            corpus.mkdir()
            make_corpus(corpus)
        paths = sorted(corpus.glob("*.xml"))
        megabytes = sum(p.stat().st_size for p in paths) / 1e6

        charlie, ref = interleaved(
            args.repeat,
            lambda: charlie_in_process(paths, work / "a.jsonl"),
            lambda: reference_loop(paths, work / "b.jsonl"),
        )
        cmd = [CHARLIE, "parse", "--input-dir", str(corpus), "--out", str(work / "r.jsonl"),
               "--rejects", str(work / "j.jsonl"), "--report", str(work / "p.json")]  # fmt: skip
        process, help_ = interleaved(
            args.repeat,
            lambda: run_process(cmd, work),
            lambda: run_process([CHARLIE, "--help"], work),
        )
        tenfold(corpus, work / "corpus10")
        big = sum(p.stat().st_size for p in (work / "corpus10").glob("*.xml")) / 1e6
        code = "from charlie.cli import main; main(sys.argv[1:])"
        rss = {name: peak_rss_mb(code, ["parse", "--input-dir", str(folder), *cmd[4:]], work)
               for name, folder in (("1x", corpus), ("10x", work / "corpus10"))}  # fmt: skip
        reference = "from bench_parse import reference_loop; from pathlib import Path; " \
                    "reference_loop(sorted(Path(sys.argv[1]).glob('*.xml')), Path(sys.argv[2]))"  # fmt: skip
        rss["reference 1x"] = peak_rss_mb(reference, [str(corpus), str(work / "b.jsonl")], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratio, wall_ratio = charlie.cpu / ref.cpu, charlie.wall / ref.wall
    print(f"corpus: {len(paths)} files, {megabytes:.1f} MB, {ref.value} theses "
          f"({charlie.value} valid records after rejects and duplicates); medians of "
          f"{args.repeat} interleaved rounds, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'measurement':<34}{'CPU s':>9}{'wall s':>9}{'MB/s':>9}  target (on CPU)")
    for label, m in (("charlie parse_files + JSONL", charlie),
                     ("reference iterparse loop + JSONL", ref)):  # fmt: skip
        print(f"{label:<34}{m.cpu:>9.3f}{m.wall:>9.3f}{megabytes / m.cpu:>9.1f}")
    print(f"{'ratio charlie / reference':<34}{ratio:>9.2f}{wall_ratio:>9.2f}{'':>9}  "
          f"<= {RATIO_TARGET}  {met(ratio <= RATIO_TARGET)}")  # fmt: skip
    print(f"{'charlie parse (whole process)':<34}{process.cpu:>9.3f}{process.wall:>9.3f}"
          f"{megabytes / process.cpu:>9.1f}  < 0.6 s  {met(process.cpu < 0.6)}")  # fmt: skip
    print(f"{'charlie --help (whole process)':<34}{help_.cpu:>9.3f}{help_.wall:>9.3f}{'':>9}"
          f"  < 0.3 s  {met(help_.cpu < 0.3)}")  # fmt: skip
    print(f"{'peak RSS':<34}{'MB':>9}{'input MB':>9}  target")
    for name, size in (("1x", megabytes), ("10x", big)):
        ok = met(rss[name] < RSS_TARGET_MB)
        print(
            f"{'charlie parse, ' + name:<34}{rss[name]:>9.0f}{size:>9.0f}  < {RSS_TARGET_MB}  {ok}"
        )
    print(f"{'reference iterparse loop, 1x':<34}{rss['reference 1x']:>9.0f}{megabytes:>9.0f}")
    print(f"{'ratio 10x / 1x':<34}{rss['10x'] / rss['1x']:>9.2f}")


if __name__ == "__main__":
    main()
