"""XML theses to records: a streaming, hardened parse that accounts for every thesis.

Pure core of ``charlie parse``: it reads the files it is given and returns records, rejects
and a report; the stage writes them. Each thesis in the input ends up in exactly one of the
records or the rejects, or is collapsed into an identical earlier one and counted, so that
``theses_seen = records + rejects + duplicates_collapsed``, per file and in total.

Hostile XML: the parser never loads a DTD, never expands an entity and never touches the
network (lxml with ``resolve_entities=False, load_dtd=False, no_network=True``), and any file
that declares a DOCTYPE is refused as a whole before its first thesis is read. Billion-laughs,
external entities and remote DTDs are therefore rejected in bounded time and memory, and the
content they point at is never read.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson
from lxml import etree

from charlie import ACTIONS
from charlie.tickers import RULE as TICKER_RULE
from charlie.tickers import valid_ticker

REASONS: dict[str, str] = {
    # one thesis
    "missing_date": "the thesis has no <as-of-date>, or it is empty",
    "invalid_date": "the date is impossible or in no accepted format",
    "missing_action": "the thesis has no <action>, or it is empty",
    "action_error": "the upstream generator failed for this thesis (action 'error')",
    "unknown_action": "the action is not STRONG_BUY, BUY, HOLD, SELL or STRONG_SELL",
    "missing_reasoning": "the thesis has no <reasoning>, or it is empty",
    "conflicting_duplicate": "another thesis for the same ticker and date says something else",
    "incomplete_thesis": "the file breaks off or turns malformed inside this thesis",
    "nested_thesis": "the thesis is inside another thesis; only the outer one is read",
    "namespaced_thesis": "the thesis element is in an XML namespace (<p:thesis>); Charlie reads "
    "un-namespaced <thesis> elements only",
    # a whole file
    "forbidden_dtd": "the file declares a DTD (DOCTYPE); DTDs and entities are refused",
    "empty_file": "the file is empty",
    "not_regular_file": "the *.xml entry is not a regular file (a directory, a pipe, a device "
    "or a broken link), so it was not read",
    "outside_input": "the *.xml entry is a symbolic link to a file outside the input directory, "
    "which parse does not follow",
    "not_xml": "the file is not XML",
    "encoding_error": "the file's bytes do not match its declared encoding",
    "malformed_xml": "the XML is malformed; theses before the fault were kept",
    "text_too_long": "a text node is longer than libxml2's 10 MB limit (huge_tree stays off: "
    "a bound on memory); theses before it were kept",
    "too_deep": "elements nest deeper than libxml2's limit of 256; theses before it were kept",
    "invalid_character": "the file holds a character XML does not allow (NUL, ESC and other "
    "control characters, raw or as &#x..;); theses before it were kept",
    "unread_after_fault": "the thesis comes after the file's fault, where the parser stopped: "
    "not read",
    "unexpected_root": "the root element is not <stock-theses>",
    "invalid_ticker": "the ticker (the root's ticker attribute, or the file name) is not a "
    f"ticker: {TICKER_RULE}",
}
ROOT_TAG = "stock-theses"
THESIS_TAG = "thesis"
EXCERPT_CHARS = 200

# --------------------------------------------------------------------- normalisation

_MONTHS = {
    name: i
    for i, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_YMD = re.compile(r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})")
_US = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")
_LONG = re.compile(r"([A-Za-z]+)\.?\s+(\d{1,2}),?\s+(\d{4})")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\S.*")
_SEPARATORS = re.compile(r"[\s_\-]+")
_ACTION_KEYS = {
    "STRONGBUY": "STRONG_BUY",
    "BUY": "BUY",
    "HOLD": "HOLD",
    "SELL": "SELL",
    "STRONGSELL": "STRONG_SELL",
}


@lru_cache(maxsize=4096)  # a corpus repeats its dates across tickers: most calls are hits
def normalize_date(text: str | None) -> tuple[str | None, str | None]:
    """Normalise a thesis date to ISO ``YYYY-MM-DD``.

    Accepts ISO dates, ISO datetimes (the date part is kept as written; no time-zone shift),
    ``YYYY/MM/DD``, US ``MM/DD/YYYY`` and ``January 8, 2024`` (or ``Jan 8 2024``).

    Returns:
        ``(iso_date, None)``, or ``(None, reason)`` with reason ``missing_date`` or
        ``invalid_date``.
    """
    value = (text or "").strip()
    if not value:
        return None, "missing_date"
    try:
        if len(value) == 10 and value[4] == "-" and value[7] == "-":  # fast path: ISO
            return dt.date.fromisoformat(value).isoformat(), None
        if _DATETIME.fullmatch(value):
            return dt.datetime.fromisoformat(value).date().isoformat(), None
        if match := _YMD.fullmatch(value):
            year, month, day = map(int, match.groups())
        elif match := _US.fullmatch(value):
            month, day, year = map(int, match.groups())
        elif (match := _LONG.fullmatch(value)) and match[1].lower() in _MONTHS:
            year, month, day = int(match[3]), _MONTHS[match[1].lower()], int(match[2])
        else:
            return None, "invalid_date"
        return dt.date(year, month, day).isoformat(), None
    except ValueError:
        return None, "invalid_date"


@lru_cache(maxsize=256)
def normalize_action(text: str | None) -> tuple[str | None, str | None]:
    """Normalise an action to ``STRONG_BUY|BUY|HOLD|SELL|STRONG_SELL``.

    Case, surrounding space and separators (spaces, hyphens, underscores) do not matter:
    ``Strong Buy``, ``strong-sell`` and `` SELL `` are all accepted.

    Returns:
        ``(action, None)``, or ``(None, reason)`` with reason ``missing_action``,
        ``action_error`` or ``unknown_action``.
    """
    key = _SEPARATORS.sub("", text or "").upper()
    if not key:
        return None, "missing_action"
    if key == "ERROR":
        return None, "action_error"
    action = _ACTION_KEYS.get(key)
    return (action, None) if action else (None, "unknown_action")


def make_uid(ticker: str, as_of_date: str) -> str:
    """Stable record id: the same ticker and date give the same uid in every run."""
    return f"{ticker}-{as_of_date}"


# ------------------------------------------------------------------------- results


@dataclass
class FileStats:
    """Per-file accounting."""

    ticker: str | None = None
    theses_seen: int = 0
    records: int = 0
    rejects: int = 0
    duplicates_collapsed: int = 0
    fault: dict[str, Any] | None = None
    ticker_from_filename: bool = False

    @property
    def status(self) -> str:
        """ok; partial when a fault stopped the file after some theses; failed otherwise."""
        if self.fault is None:
            return "ok"
        return "partial" if self.theses_seen else "failed"


@dataclass
class ParseResult:
    """Everything ``charlie parse`` writes.

    The records stay on disk (an anonymous temporary file) until they are read:
    :meth:`iter_records` streams them in order, :meth:`write_records` copies them to a file,
    ``records`` is the list, so a corpus of any size parses in bounded memory when the caller
    streams.
    """

    rejects: list[dict[str, Any]]
    files: dict[str, FileStats]
    file_faults: list[dict[str, Any]] = field(default_factory=list)
    spool: Any = None  # each (ticker, date)'s first thesis, one JSON line each, in order
    skipped: dict[int, int] = field(default_factory=dict)  # spool offset -> size: conflicts
    n_records: int = 0
    by_ticker: Counter[str] = field(default_factory=Counter)
    by_action: Counter[str] = field(default_factory=Counter)
    dates: tuple[str | None, str | None] = (None, None)

    def iter_records(self) -> Iterator[bytes]:
        """The records, as their JSON lines (newline included), in order."""
        if self.spool is None:
            return
        self.spool.seek(0)
        offset, skipped = 0, self.skipped
        for line in self.spool:
            if offset not in skipped:
                yield line
            offset += len(line)

    def write_records(self, handle: Any) -> None:
        """Write the records to a binary file: :meth:`iter_records`' lines, copied in blocks.

        The spool's bytes go across in 1 MiB blocks around the skipped lines, not a line at a
        time, so writing costs a few system calls rather than a Python call per record.
        """
        if self.spool is None:
            return
        self.spool.flush()
        fd, offset, end = self.spool.fileno(), 0, self.spool.seek(0, os.SEEK_END)
        for start, size in [*sorted(self.skipped.items()), (end, 0)]:
            while offset < start:
                block = os.pread(fd, min(_SPOOL_BUFFER, start - offset), offset)
                handle.write(block)
                offset += len(block)
            offset = start + size

    @property
    def records(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.iter_records()]

    @property
    def thesis_rejects(self) -> int:
        return len(self.rejects) - len(self.file_faults)

    def report(self, input_dir: str) -> dict[str, Any]:
        """The parse report: totals that add up, per file and in total, plus breakdowns."""
        totals = {
            "files": len(self.files),
            "files_ok": sum(f.status == "ok" for f in self.files.values()),
            "files_partial": sum(f.status == "partial" for f in self.files.values()),
            "files_failed": sum(f.status == "failed" for f in self.files.values()),
            "theses_seen": sum(f.theses_seen for f in self.files.values()),
            "records": self.n_records,
            "rejects": self.thesis_rejects,
            "duplicates_collapsed": sum(f.duplicates_collapsed for f in self.files.values()),
        }
        balanced = totals["theses_seen"] == (
            totals["records"] + totals["rejects"] + totals["duplicates_collapsed"]
        ) and all(
            f.theses_seen == f.records + f.rejects + f.duplicates_collapsed
            for f in self.files.values()
        )
        return {
            "input_dir": input_dir,
            "balanced": balanced,
            "totals": totals,
            "records_by_ticker": dict(sorted(self.by_ticker.items())),
            "records_by_action": {a: self.by_action.get(a, 0) for a in ACTIONS},
            "reject_reasons": dict(
                sorted(Counter(r["reason"] for r in self.rejects if r["scope"] == "thesis").items())
            ),
            "file_faults": dict(sorted(Counter(f["reason"] for f in self.file_faults).items())),
            "date_range": {"first": self.dates[0], "last": self.dates[1]},
            # A list, not a mapping, so `dvc metrics show` keeps to the headline numbers.
            "files": [
                {
                    "file": name,
                    "ticker": f.ticker,
                    "status": f.status,
                    "theses_seen": f.theses_seen,
                    "records": f.records,
                    "rejects": f.rejects,
                    "duplicates_collapsed": f.duplicates_collapsed,
                    **({"ticker_from_filename": True} if f.ticker_from_filename else {}),
                    **({"fault": f.fault} if f.fault else {}),
                }
                for name, f in self.files.items()
            ],
        }


# -------------------------------------------------------------------------- parsing


def _reject(name: str, line: int, reason: str, excerpt: str, scope: str = "thesis") -> dict:
    return {
        "source_file": name,
        "source_line": line,
        "reason": reason,
        "excerpt": excerpt[:EXCERPT_CHARS],
        "scope": scope,
    }


def _text(elem: Any) -> str:
    if len(elem):  # mixed content: keep the text of any inline children
        return "".join(elem.itertext()).strip()
    return (elem.text or "").strip()


def _excerpt(fields: dict[str, str]) -> str:
    return " ".join(f"{k}={v[:60]!r}" for k, v in fields.items())


def _declares_doctype(path: Path) -> bool:
    """Whether the file's prolog has a DOCTYPE, for naming an error raised before the root.

    Only used to give the right reason: safety comes from the parser's options, not from this.
    """
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = head.decode("utf-16", errors="ignore")
    else:
        text = head.decode("latin-1")
    return "<!DOCTYPE" in text


def _classify_error(exc: etree.XMLSyntaxError, root_seen: bool, path: Path) -> str:
    message = str(exc.msg or exc).lower()
    if not root_seen and _declares_doctype(path):
        return "forbidden_dtd"  # e.g. an entity used in the root's attributes
    if "encoding" in message or "invalid bytes" in message or "not proper utf" in message:
        return "encoding_error"
    if not root_seen:
        return "not_xml"
    if "text node too long" in message or "huge text" in message:
        return "text_too_long"
    if "excessive depth" in message:
        return "too_deep"
    if "char value" in message or "invalid character" in message or "xmlchar" in message:
        return "invalid_character"
    return "malformed_xml"


_FIELDS = frozenset(("as-of-date", "reasoning", "action", "support"))
_THESIS_START = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?thesis[\s>/]")
_SCAN_CHUNK = 1 << 20
_SPOOL_BUFFER = 1 << 20  # a 2.5 kB record line per write: one system call per ~400 of them


def thesis_starts(path: Path) -> Iterator[tuple[int, int]]:
    """(line, byte offset) of every ``<thesis`` (or ``<p:thesis``) start tag in the raw file,
    read in 1 MiB chunks: what a parse that stopped at a fault did not reach, counted without
    the parser (a tag inside a comment or CDATA counts too)."""
    with open(path, "rb") as handle:
        head = handle.read(2)
        handle.seek(0)
        if head in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16: decode first (offsets in characters)
            import codecs

            reader = codecs.getreader("utf-16")(handle, errors="replace")
            chunks: Iterator[bytes] = (
                c.encode("utf-8") for c in iter(lambda: reader.read(_SCAN_CHUNK), "")
            )
        else:
            chunks = iter(lambda: handle.read(_SCAN_CHUNK), b"")
        carry, base, line = b"", 0, 1
        for chunk in chunks:
            data = carry + chunk
            keep = min(len(data), 64)  # a tag cut at the chunk's end is matched next time
            limit = len(data) - keep
            last = 0
            for match in _THESIS_START.finditer(data):
                if match.start() >= limit and chunk:
                    break
                line += data.count(b"\n", last, match.start())
                last = match.start()
                yield line, base + match.start()
            line += data.count(b"\n", last, limit)
            carry, base = data[limit:], base + limit
        for match in _THESIS_START.finditer(carry):
            yield line + carry.count(b"\n", 0, match.start()), base + match.start()


def _drop_read(elem: Any) -> None:
    """Free a read thesis and the siblings before it, so that memory stays flat on big files.

    Siblings in its own parent: a thesis may sit in a wrapper element below the root.
    """
    elem.clear()
    parent = elem.getparent()
    while parent is not None and elem.getprevious() is not None:
        del parent[0]


@dataclass
class _Kept:
    """What :func:`parse_files` keeps across files: the spool and the duplicate map."""

    spool: Any
    # (ticker, date) -> (seq, spool offset, line size, file index, source line, action)
    firsts: dict[tuple[str, str], tuple[int, int, int, int, int, str]] = field(default_factory=dict)
    # (ticker, date) -> [(seq, file index, source line, action)] of its later theses
    later: dict[tuple[str, str], list[tuple[int, int, int, str]]] = field(default_factory=dict)
    conflicts: set[tuple[str, str]] = field(default_factory=set)
    seq: int = 0  # the next valid thesis's place among all valid ones
    offset: int = 0  # the spool's size


def _read_file(
    source: Any,
    path: Path,
    name: str,
    file_index: int,
    stats: FileStats,
    rejects: list[dict],
    faults: list[dict],
    kept: _Kept,
) -> None:
    """Read one file: each valid thesis that is its (ticker, date)'s first goes to the spool as
    its record line, a later one to the duplicate map; rejects, the file's fault and any
    incomplete thesis are recorded as they are met.

    The loop below runs twice per thesis (its start and its end) and is nearly all of
    Charlie's own time in a parse, so the common case is tested first, the state lives in
    local variables and the small helpers (``_drop_read``, ``_text``, ``make_uid``) are
    inlined.
    """
    context = etree.iterparse(
        source,
        events=("start", "end"),
        tag=(ROOT_TAG, THESIS_TAG, "{*}" + THESIS_TAG),  # any namespace: reported
        resolve_entities=False,
        load_dtd=False,
        no_network=True,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    root = None
    open_lines: list[int] = []  # the start lines of the theses open at this point
    ticker = stats.ticker or ""

    def fail(reason: str, line: int, message: str) -> None:
        stats.fault = {"reason": reason, "line": line, "message": message[:EXCERPT_CHARS]}
        faults.append(_reject(name, line, reason, message, scope="file"))

    def refuse(tree_root: Any) -> bool:
        docinfo = tree_root.getroottree().docinfo
        if docinfo.doctype or docinfo.internalDTD is not None:
            fail("forbidden_dtd", tree_root.sourceline or 1, REASONS["forbidden_dtd"])
            return True
        if tree_root.tag != ROOT_TAG:
            fail("unexpected_root", tree_root.sourceline or 1, f"root is <{tree_root.tag}>")
            return True
        return False

    spool, firsts, later, conflicts = kept.spool, kept.firsts, kept.later, kept.conflicts
    write, dumps, newline = spool.write, orjson.dumps, orjson.OPT_APPEND_NEWLINE
    wanted, date_of, action_of = _FIELDS, normalize_date, normalize_action
    seq, offset = kept.seq, kept.offset
    seen = 0  # theses started: added to stats.theses_seen at the end, or on a fault
    try:
        for event, elem in context:
            if root is None:
                root = elem.getroottree().getroot()
                if refuse(root):
                    return
                ticker = (root.get("ticker") or "").strip().upper()
                if not ticker:
                    ticker = Path(name).stem.upper()
                    stats.ticker_from_filename = True
                if not valid_ticker(ticker):
                    fail("invalid_ticker", root.sourceline or 1,
                         f"ticker {ticker[:40]!r}: {REASONS['invalid_ticker']}")  # fmt: skip
                    return
                stats.ticker = ticker
            tag = elem.tag  # lxml builds a new string at each .tag: read it once
            if event == "start":
                if tag != ROOT_TAG:
                    seen += 1
                    open_lines.append(elem.sourceline or 0)
                continue
            if tag != THESIS_TAG or len(open_lines) > 1:  # namespaced, nested, the root's end
                if tag == ROOT_TAG:
                    continue
                line = open_lines.pop()
                reason = "namespaced_thesis" if tag != THESIS_TAG else "nested_thesis"
                stats.rejects += 1
                rejects.append(_reject(name, line, reason, f"<{tag}> at line {line}"))
                if not open_lines:  # a nested one goes with its outer thesis
                    _drop_read(elem)
                continue
            line = open_lines.pop()  # an element's sourceline is its start tag's
            fields: dict[str, str] = {}
            for child in elem:  # the first of each field counts
                field_tag = child.tag
                if field_tag in wanted and field_tag not in fields:
                    fields[field_tag] = _text(child) if len(child) else (child.text or "").strip()
            elem.clear()  # _drop_read(elem)
            parent = elem.getparent()
            while parent is not None and elem.getprevious() is not None:
                del parent[0]

            date, reason = date_of(fields.get("as-of-date"))
            if reason is None:
                action, reason = action_of(fields.get("action"))
                if reason is None and not fields.get("reasoning"):
                    reason = "missing_reasoning"
            if reason is not None:
                stats.rejects += 1
                rejects.append(_reject(name, line, reason, _excerpt(fields)))
                continue
            record = {
                "uid": f"{ticker}-{date}",  # make_uid(ticker, date)
                "ticker": ticker,
                "as_of_date": date,
                "action": action,
                "reasoning": fields["reasoning"],
                "support": fields.get("support", ""),
                "source_file": name,
                "source_line": line,
            }
            key = (ticker, date)
            first = firsts.get(key)
            if first is None:
                data = dumps(record, option=newline)
                write(data)
                size = len(data)
                firsts[key] = (seq, offset, size, file_index, line, action)
                offset += size
            else:
                later.setdefault(key, []).append((seq, file_index, line, action))
                if key not in conflicts and not _agrees(spool, first[1], first[2], record):
                    conflicts.add(key)
            seq += 1
        if root is None and context.root is not None:  # a document with no thesis at all
            refuse(context.root)
    except etree.XMLSyntaxError as exc:
        stats.theses_seen += seen
        seen = 0
        line = exc.lineno or 0
        reason = _classify_error(exc, root is not None, path)
        if stats.fault is None:
            fail(reason, line, REASONS[reason] if reason == "forbidden_dtd" else str(exc.msg))
        for open_line in open_lines:
            stats.rejects += 1
            rejects.append(
                _reject(name, open_line, "incomplete_thesis", f"{reason} at line {line}: {exc.msg}")
            )
        # What the parser never reached is counted from the raw bytes: the theses beyond the
        # ones it saw start (in document order) are unread, not lost.
        unread = thesis_starts(path) if reason != "forbidden_dtd" else iter(())  # never read
        for start_line, offset_ in itertools.islice(unread, stats.theses_seen, None):
            stats.theses_seen += 1
            stats.rejects += 1
            rejects.append(_reject(name, start_line, "unread_after_fault",
                                   f"byte offset {offset_}; the parser stopped at line {line} "
                                   f"({reason})"))  # fmt: skip
    finally:
        stats.theses_seen += seen
        kept.seq, kept.offset = seq, offset


def _refused(path: Path, root: Path | None) -> str | None:
    """Why an input entry is not read (None: it is read)."""
    if root is not None and path.is_symlink() and path.exists():
        target = path.resolve()
        if target.parent != root.resolve() and root.resolve() not in target.parents:
            return "outside_input"
    return None if path.is_file() else "not_regular_file"


def parse_files(
    paths: Iterable[Path],
    *,
    names: Callable[[Path], str] = lambda p: p.name,
    opener: Callable[[Path], Any] | None = None,
    root: Path | None = None,
) -> ParseResult:
    """Parse XML thesis files into records and rejects, in the given order.

    Args:
        paths: The files, in the order their records should appear.
        names: How a file is named in records, rejects and the report.
        opener: Returns the source lxml reads for a path (a file object, e.g. one that
            reports progress); the default lets lxml open the path itself.
        root: The input directory: a path that is a link to a file outside it is reported
            (``outside_input``), not read. Entries that are not regular files are reported
            (``not_regular_file``) either way.

    Returns:
        Records (duplicates collapsed, conflicts removed), rejects, and per-file statistics.
    """
    files: dict[str, FileStats] = {}
    rejects: list[dict] = []
    faults: list[dict] = []
    # Each (ticker, date)'s first thesis is written to the spool as its record line as soon as
    # it is read; memory keeps, per key, where that line is and what the report needs, and
    # for a later thesis of the same key only its place and action. A later one is compared
    # with the first as read back from the spool: exactly, field by field, no digest. Tuples of
    # numbers and strings, which the garbage collector stops tracking: a large corpus adds
    # nothing to its collections.
    spool = tempfile.TemporaryFile(buffering=_SPOOL_BUFFER)  # noqa: SIM115 - the result owns it
    kept = _Kept(spool)
    firsts, later, conflicts = kept.firsts, kept.later, kept.conflicts
    names_by_index: list[str] = []
    for path in paths:
        name = names(path)
        stats = files[name] = FileStats()
        refused = _refused(path, root)
        if refused is None and path.stat().st_size == 0:
            refused = "empty_file"
        if refused is not None:
            stats.fault = {"reason": refused, "line": 0, "message": REASONS[refused]}
            faults.append(_reject(name, 0, refused, REASONS[refused], scope="file"))
            continue
        file_index = len(names_by_index)
        names_by_index.append(name)
        source = opener(path) if opener else str(path)
        try:
            _read_file(source, path, name, file_index, stats, rejects, faults, kept)
        finally:
            if hasattr(source, "close"):
                source.close()

    # Decided once all files are read, so the outcome does not depend on document order: a
    # ticker and date whose theses all agree keep the first and collapse the rest; any
    # disagreement rejects every one of them (the first's line stays in the spool, skipped).
    out = ParseResult(rejects=rejects, files=files, file_faults=faults, spool=spool)
    conflicting: list[tuple[int, dict]] = []
    for key in conflicts:
        seq, at, size, file_index, line, action = firsts.pop(key)
        out.skipped[at] = size
        theses = [(seq, file_index, line, action), *later.pop(key)]
        for seq, file_index, line, action in theses:
            name = names_by_index[file_index]
            files[name].rejects += 1
            message = f"{key[0]} {key[1]}: {len(theses)} theses disagree (this one says {action})"
            conflicting.append((seq, _reject(name, line, "conflicting_duplicate", message)))
    conflicting.sort(key=lambda pair: pair[0])  # in document order, as they were read
    rejects.extend(reject for _, reject in conflicting)
    # Counted in C (Counter over itemgetters), not in a Python loop over every record: the
    # same counts, in the same first-seen order.
    for file_index, count in Counter(map(itemgetter(3), firsts.values())).items():
        files[names_by_index[file_index]].records += count
    out.by_ticker = Counter(map(itemgetter(0), firsts))
    out.by_action = Counter(map(itemgetter(5), firsts.values()))
    for theses in later.values():
        for _, file_index, _, _ in theses:
            files[names_by_index[file_index]].duplicates_collapsed += 1
    out.n_records = len(firsts)
    if firsts:
        out.dates = (min(map(itemgetter(1), firsts)), max(map(itemgetter(1), firsts)))
    rejects.extend(faults)
    rejects.sort(key=lambda r: (r["source_file"], r["source_line"]))
    return out


def _agrees(spool: Any, offset: int, size: int, record: dict[str, Any]) -> bool:
    """Whether ``record`` says what the record line at ``offset`` in the spool says."""
    spool.flush()
    kept = orjson.loads(os.pread(spool.fileno(), size, offset))
    return all(kept[k] == record[k] for k in ("action", "reasoning", "support"))
