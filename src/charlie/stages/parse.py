"""Parse XML theses into JSONL records, safely, accounting for every thesis.

Reads every *.xml in --input-dir (sorted), streams it with a hardened lxml parser (no DTD, no
entity expansion, no network) and writes:
  --out      records.jsonl: uid, ticker, as_of_date, action, reasoning, support,
             source_file, source_line (one per valid thesis)
  --rejects  rejects.jsonl: source_file, source_line, reason, excerpt, scope (thesis or file)
  --report   parse_report.json: theses seen = records + rejects + collapsed duplicates,
             per file and in total; counts per ticker, action and reason; the date range;
             and "source": the kind (local, s3 or dvc), URI and version of what was read

Where the theses come from (see charlie.sources):
  --input-dir DIR                   a local directory (default: the sample, data/samples/xml)
  --input-dir s3://bucket/prefix/   every object under the prefix of an S3-compatible store
                                    (MinIO: AWS_ENDPOINT_URL; credentials AWS_ACCESS_KEY_ID,
                                    AWS_SECRET_ACCESS_KEY)
  --dvc-repo URL [--dvc-rev REV] --input-dir PATH
                                    PATH as DVC tracks it in that git repository at REV
                                    (default: its default branch), as `dvc get` fetches it;
                                    the DVC remote's credentials come from the same AWS_*
Remote sources are downloaded into a temporary directory, removed afterwards, and parsed as a
local one (only the *.xml directly in it). The version is logged and recorded in the report:
local and every kind: tree_sha256 (sha256 over sorted relative paths and bytes); s3: sha256
over the keys, ETags and VersionIds, and the object count; dvc: the revision asked, the
commit it resolved to and DVC's md5 of the path.

Outputs are replaced atomically and together; a failed run leaves the previous ones intact.

exit codes:
  0  completed (with or without rejects)
  1  --strict and something was rejected (outputs are still written)
  2  the input directory is missing, holds no XML, or yields no valid record; the bucket or
     prefix is missing or empty, the credentials are refused, or `dvc get` fails (a bad rev)
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import orjson

from charlie import headlines
from charlie.config import ParseParams, add_flags, load_params
from charlie.errors import CharlieError
from charlie.headlines import headline_path, write_headline
from charlie.io import atomic_outputs, require_distinct
from charlie.kubeflow import executor as kfp_executor
from charlie.logs import setup_logging
from charlie.parsing import REASONS, parse_files
from charlie.progress import progress_bar
from charlie.sources import open_source

log = logging.getLogger("charlie.parse")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags override params.yaml's `parse` section."""
    add_flags(parser, ParseParams, "parse")
    kfp_executor.add_argument(parser)


class _Progress:
    """A file wrapper that advances a progress bar as lxml reads it."""

    def __init__(self, path: Path, bar) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by parse_files
        self._bar = bar

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._bar.update(len(data))
        return data

    def close(self) -> None:
        self._file.close()


def run(args: argparse.Namespace) -> int:
    """Parse, write outputs atomically, print a summary; returns the exit code."""
    params = load_params(args).parse
    log_file = setup_logging("parse")
    log.debug("parse: %s", params.model_dump_json())

    input_dir = params.input_dir
    outputs = {"--out": params.out, "--rejects": params.rejects, "--report": params.report}
    require_distinct(outputs)
    where = f"{input_dir} in {params.dvc_repo}" if params.dvc_repo else input_dir
    opened = open_source(input_dir, dvc_repo=params.dvc_repo, dvc_rev=params.dvc_rev)
    with opened as (directory, source):  # a remote source's download is removed at the end
        log.info("reading theses from %s", source.describe())
        paths = sorted(directory.glob("*.xml"))  # every entry: what is not read is reported
        if not paths:
            raise CharlieError(f"input directory {where} holds no *.xml file.")
        require_distinct(outputs, {p.name: p for p in paths})
        total = sum(p.stat().st_size for p in paths if p.is_file())
        with progress_bar(total=total, unit="B", unit_scale=True, desc="parse") as bar:
            result = parse_files(paths, opener=lambda p: _Progress(p, bar), root=directory)
    report = result.report(where)
    report = {"input_dir": report.pop("input_dir"), "source": source.as_dict(), **report}
    _summary(report, REASONS)

    if not result.n_records:
        raise CharlieError(
            f"no valid thesis in {where} ({report['totals']['theses_seen']} seen, "
            f"{len(result.rejects)} rejected); previous outputs were left as they were."
        )
    headline = headline_path(params.report, "parse")
    with atomic_outputs(params.out, params.rejects, params.report, headline) as (out, rej, rep, hl):
        with open(out, "wb") as handle:  # copied from the spool: never all in memory at once
            result.write_records(handle)
        _write_jsonl(
            rej, (orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in result.rejects)
        )
        rep.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        write_headline(hl, headlines.parse(report))
    log.info("wrote %s, %s and %s (log: %s)", params.out, params.rejects, params.report, log_file)
    kfp_executor.publish(args.kfp_executor_input, metrics=report["totals"])

    if params.strict and result.rejects:
        log.error("--strict: %d rejects, exiting 1 (see %s)", len(result.rejects), params.rejects)
        return 1
    return 0


def _write_jsonl(path: Path, lines: Iterable[bytes]) -> None:
    """JSON lines (orjson's: UTF-8 as is, ~5x faster than json here), streamed to ``path``."""
    with open(path, "wb") as handle:
        handle.writelines(lines)


def _summary(report: dict, reasons: dict[str, str]) -> None:
    t = report["totals"]
    lines = [
        f"parsed {t['files']} files from {report['input_dir']}: "
        f"{t['files_ok']} ok, {t['files_partial']} partial, {t['files_failed']} failed",
        f"theses seen {t['theses_seen']} = records {t['records']} + rejects {t['rejects']} "
        f"+ duplicates collapsed {t['duplicates_collapsed']}"
        + ("" if report["balanced"] else "  (DOES NOT ADD UP: please report a bug)"),
    ]
    if report["date_range"]["first"]:
        lines.append(f"dates {report['date_range']['first']} .. {report['date_range']['last']}")
    if report["records_by_action"]:
        lines.append(
            "actions  " + "  ".join(f"{a} {n}" for a, n in report["records_by_action"].items())
        )
    if report["records_by_ticker"]:
        tickers = list(report["records_by_ticker"].items())
        shown = "  ".join(f"{k} {v}" for k, v in tickers[:12])
        more = f"  (+{len(tickers) - 12} more)" if len(tickers) > 12 else ""
        lines.append(f"tickers  {shown}{more}")
    for reason, count in report["reject_reasons"].items():
        lines.append(f"rejected {count:>5}  {reason}: {reasons.get(reason, '')}")
    for info in report["files"]:
        if "fault" in info:
            fault = info["fault"]
            lines.append(
                f"file {info['status']:>7}  {info['file']} line {fault['line']}: {fault['reason']}: "
                f"{fault['message']}"
            )
    for line in lines:
        log.info(line)
