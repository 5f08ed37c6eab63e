"""Parse speed on the real volume, side by side with a plain lxml iterparse loop.

    .venv/bin/python benchmarks/bench_parse.py [--corpus DIR] [--repeat 5]     (or: make bench)

The corpus is the real volume (20 tickers x 376 trading days, ~2.5 kB per thesis, ~19 MB),
generated into a temporary directory unless --corpus names one. Reported, best of --repeat:

* in-process: charlie's parse_files + JSONL serialisation, against a plain
  ``lxml.etree.iterparse`` loop that writes the same record fields with the same serialiser
  but does no hardening, normalisation, validation or accounting. Target: ratio <= 2.
* process: the whole ``charlie parse`` command (start-up, parse, atomic writes, report).
  Target: < 0.6 s on 2 cores.
* ``charlie --help``. Target: < 0.3 s.
* peak memory: the whole ``charlie parse`` process's peak RSS on the corpus (1x) and on ten
  copies of it (10x, each copy's tickers renamed, so no thesis collapses into another), with
  the reference loop's at 1x beside it. Target: under 200 MB whatever the corpus size (the
  records stream to disk; memory holds one digest per ticker and date).
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
from common import best_of, met

CHARLIE = str(Path(sys.executable).parent / "charlie")


def make_corpus(directory: Path) -> None:
    spec = SampleSpec(tickers=20, detail="full", ipo_ticker=False)
    for sample in generate(spec):
        (directory / f"{sample.ticker}.xml").write_text(render_xml(sample, spec.seed))


def charlie_in_process(paths: list[Path], out: Path) -> int:
    result = parse_files(paths)
    with open(out, "wb") as handle:
        handle.writelines(result.iter_records())
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
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (best kept)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-parse-"))
    try:
        corpus = args.corpus or work / "corpus"
        if args.corpus is None:
            corpus.mkdir()
            make_corpus(corpus)
        paths = sorted(corpus.glob("*.xml"))
        megabytes = sum(p.stat().st_size for p in paths) / 1e6

        t_charlie, n_charlie = best_of(args.repeat, charlie_in_process, paths, work / "a.jsonl")
        t_ref, n_ref = best_of(args.repeat, reference_loop, paths, work / "b.jsonl")
        cmd = [CHARLIE, "parse", "--input-dir", str(corpus), "--out", str(work / "r.jsonl"),
               "--rejects", str(work / "j.jsonl"), "--report", str(work / "p.json")]  # fmt: skip
        t_process, _ = best_of(args.repeat, run_process, cmd, work)
        t_help, _ = best_of(args.repeat, run_process, [CHARLIE, "--help"], work)
        tenfold(corpus, work / "corpus10")
        big = sum(p.stat().st_size for p in (work / "corpus10").glob("*.xml")) / 1e6
        charlie = "from charlie.cli import main; main(sys.argv[1:])"
        rss = {name: peak_rss_mb(charlie, ["parse", "--input-dir", str(folder), *cmd[4:]], work)
               for name, folder in (("1x", corpus), ("10x", work / "corpus10"))}  # fmt: skip
        reference = "from bench_parse import reference_loop; from pathlib import Path; " \
                    "reference_loop(sorted(Path(sys.argv[1]).glob('*.xml')), Path(sys.argv[2]))"  # fmt: skip
        rss["reference 1x"] = peak_rss_mb(reference, [str(corpus), str(work / "b.jsonl")], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratio = t_charlie / t_ref
    print(f"corpus: {len(paths)} files, {megabytes:.1f} MB, {n_ref} theses "
          f"({n_charlie} valid records after rejects and duplicates); best of {args.repeat}, "
          f"{os.cpu_count()} cores")  # fmt: skip
    print(f"{'measurement':<34}{'seconds':>9}{'MB/s':>9}  target")
    print(f"{'charlie parse_files + JSONL':<34}{t_charlie:>9.3f}{megabytes / t_charlie:>9.1f}")
    print(f"{'reference iterparse loop + JSONL':<34}{t_ref:>9.3f}{megabytes / t_ref:>9.1f}")
    print(f"{'ratio charlie / reference':<34}{ratio:>9.2f}{'':>9}  <= 2.0  {met(ratio <= 2.0)}")
    print(f"{'charlie parse (whole process)':<34}{t_process:>9.3f}{megabytes / t_process:>9.1f}"
          f"  < 0.6 s  {met(t_process < 0.6)}")  # fmt: skip
    print(
        f"{'charlie --help (whole process)':<34}{t_help:>9.3f}{'':>9}  < 0.3 s  {met(t_help < 0.3)}"
    )
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
