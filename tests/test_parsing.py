"""Tests for charlie.parsing: the pure core of ``charlie parse`` (XML theses -> records/rejects)."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from charlie.parsing import REASONS, normalize_action, normalize_date, parse_files

RECORD_KEYS = [
    "uid",
    "ticker",
    "as_of_date",
    "action",
    "reasoning",
    "support",
    "source_file",
    "source_line",
]
REJECT_KEYS = {"source_file", "source_line", "reason", "excerpt", "scope"}
OMIT = object()  # a field value meaning "leave the element out"
_ELEMENTS = (
    ("date", "as-of-date"),
    ("reasoning", "reasoning"),
    ("action", "action"),
    ("support", "support"),
)


# ----------------------------------------------------------------------------- helpers


def thesis_xml(thesis: dict[str, Any], cdata: frozenset[str] = frozenset()) -> str:
    """One <thesis> block, one element per line; OMIT leaves an element out."""
    values = {
        "date": "2024-01-08",
        "reasoning": "Detailed analysis.",
        "action": "buy",
        "support": "Supporting points.",
        **thesis,
    }
    lines = ["  <thesis>"]
    for key, tag in _ELEMENTS:
        value = values[key]
        if value is OMIT:
            continue
        if key in cdata:
            value = f"<![CDATA[{value}]]>"
        lines.append(f"    <{tag}>{value}</{tag}>")
    lines.append("  </thesis>")
    return "\n".join(lines) + "\n"


def document(
    theses: list[dict[str, Any]],
    *,
    ticker: str | None = "TSLA",
    encoding: str = "UTF-8",
    doctype: str = "",
    root: str = "stock-theses",
    cdata: frozenset[str] = frozenset(),
    close: bool = True,
) -> str:
    ticker_attr = "" if ticker is None else f' ticker="{ticker}"'
    text = f'<?xml version="1.0" encoding="{encoding}"?>\n'
    if doctype:
        text += doctype.rstrip("\n") + "\n"
    text += f'<{root}{ticker_attr} generated-by="Trainer-Charlie" version="1.0">\n'
    text += "".join(thesis_xml(t, cdata) for t in theses)
    if close:
        text += f"</{root}>\n"
    return text


def write(path: Path, content: str | bytes, codec: str = "utf-8", bom: bool = False) -> Path:
    data = content if isinstance(content, bytes) else content.encode(codec)
    if bom:
        data = "\ufeff".encode(codec) + data
    path.write_bytes(data)
    return path


def write_doc(path: Path, theses: list[dict[str, Any]], **kwargs: Any) -> Path:
    return write(path, document(theses, **kwargs))


def thesis_lines(path: Path, codec: str = "utf-8") -> list[int]:
    """1-based line numbers of every <thesis> start tag in the file."""
    text = path.read_bytes().decode(codec)
    return [i for i, line in enumerate(text.splitlines(), 1) if "<thesis>" in line]


def reasons(result: Any) -> list[str]:
    return [r["reason"] for r in result.rejects]


def file_entry(report: dict, name: str) -> dict:
    (entry,) = [f for f in report["files"] if f["file"] == name]
    return entry


def parse_one(tmp_path: Path, theses: list[dict[str, Any]], **kwargs: Any) -> Any:
    return parse_files([write_doc(tmp_path / "tsla.xml", theses, **kwargs)])


# ------------------------------------------------------------------------ dates


@pytest.mark.parametrize(
    ("raw", "iso"),
    [
        ("2024-01-08", "2024-01-08"),
        ("2024-01-08T16:00:00-05:00", "2024-01-08"),
        ("2024-01-08T09:30:00Z", "2024-01-08"),
        ("2024/01/08", "2024-01-08"),
        ("01/08/2024", "2024-01-08"),
        ("January 8, 2024", "2024-01-08"),
        ("Jan 8 2024", "2024-01-08"),
        ("  2024-01-08  ", "2024-01-08"),
        ("\n\t01/08/2024 ", "2024-01-08"),
        ("  January 8, 2024\n", "2024-01-08"),
        ("2024-02-29", "2024-02-29"),
    ],
)
def test_normalize_date_accepted(raw: str, iso: str) -> None:
    assert normalize_date(raw) == (iso, None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("2024-02-30", "invalid_date"),
        ("2023-02-29", "invalid_date"),
        ("13/01/2024", "invalid_date"),
        ("2024-01-32", "invalid_date"),
        ("2024-01-08T25:00:00", "invalid_date"),
        ("Smarch 8, 2024", "invalid_date"),
        ("yesterday", "invalid_date"),
        ("", "missing_date"),
        ("   \n\t", "missing_date"),
        (None, "missing_date"),
    ],
)
def test_normalize_date_rejected(raw: str | None, reason: str) -> None:
    assert normalize_date(raw) == (None, reason)


@pytest.mark.parametrize(
    ("raw", "iso"),
    [
        ("2024-01-08T16:00:00-05:00", "2024-01-08"),
        ("2024-01-08T09:30:00Z", "2024-01-08"),
        ("01/08/2024", "2024-01-08"),
        ("January 8, 2024", "2024-01-08"),
        ("  Jan 8 2024  ", "2024-01-08"),
        ("2024-02-29", "2024-02-29"),
    ],
)
def test_parse_normalizes_dates_in_records(tmp_path: Path, raw: str, iso: str) -> None:
    result = parse_one(tmp_path, [{"date": raw}])
    assert result.rejects == []
    [record] = result.records
    assert record["as_of_date"] == iso
    assert record["uid"] == f"TSLA-{iso}"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("2024-02-30", "invalid_date"),
        ("2023-02-29", "invalid_date"),
        ("13/01/2024", "invalid_date"),
        ("2024-01-32", "invalid_date"),
        ("yesterday", "invalid_date"),
        ("", "missing_date"),
        ("   ", "missing_date"),
        (OMIT, "missing_date"),
    ],
)
def test_parse_rejects_bad_dates(tmp_path: Path, raw: Any, reason: str) -> None:
    result = parse_one(tmp_path, [{"date": raw}])
    assert result.records == []
    assert reasons(result) == [reason]
    assert result.rejects[0]["scope"] == "thesis"


# ---------------------------------------------------------------------- actions


@pytest.mark.parametrize(
    ("raw", "action"),
    [
        ("Strong Buy", "STRONG_BUY"),
        ("strong-sell", "STRONG_SELL"),
        (" SELL ", "SELL"),
        ("buy", "BUY"),
        ("HOLD", "HOLD"),
        ("strong_buy", "STRONG_BUY"),
        ("STRONG BUY", "STRONG_BUY"),
    ],
)
def test_actions_normalized(tmp_path: Path, raw: str, action: str) -> None:
    assert normalize_action(raw) == (action, None)
    result = parse_one(tmp_path, [{"action": raw}])
    assert result.rejects == []
    assert [r["action"] for r in result.records] == [action]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("error", "action_error"),
        ("ERROR", "action_error"),
        (" Error ", "action_error"),
        ("accumulate", "unknown_action"),
        ("", "missing_action"),
        ("  ", "missing_action"),
        (OMIT, "missing_action"),
    ],
)
def test_actions_rejected(tmp_path: Path, raw: Any, reason: str) -> None:
    if raw is not OMIT:
        assert normalize_action(raw) == (None, reason)
    result = parse_one(tmp_path, [{"action": raw}])
    assert result.records == []
    assert reasons(result) == [reason]


def test_normalize_action_none_is_missing() -> None:
    assert normalize_action(None) == (None, "missing_action")


# ------------------------------------------------------------- reasoning / support


@pytest.mark.parametrize("raw", ["", "   \n\t  ", OMIT])
def test_missing_reasoning_rejected(tmp_path: Path, raw: Any) -> None:
    result = parse_one(tmp_path, [{"reasoning": raw}])
    assert result.records == []
    assert reasons(result) == ["missing_reasoning"]


@pytest.mark.parametrize("raw", ["", "   ", OMIT])
def test_empty_support_allowed(tmp_path: Path, raw: Any) -> None:
    result = parse_one(tmp_path, [{"support": raw}])
    assert result.rejects == []
    [record] = result.records
    assert record["support"] == ""
    assert record["reasoning"] == "Detailed analysis."


# ------------------------------------------------------------------ text content


def test_text_is_trimmed(tmp_path: Path) -> None:
    result = parse_one(
        tmp_path,
        [
            {
                "reasoning": "\n   Margins expand.  \n ",
                "support": "\t Deliveries up.\n",
                "action": " hold ",
            }
        ],
    )
    [record] = result.records
    assert record["reasoning"] == "Margins expand."
    assert record["support"] == "Deliveries up."
    assert record["action"] == "HOLD"


def test_cdata_kept_verbatim(tmp_path: Path) -> None:
    reasoning = "P/E < 30 & <b>margins</b> > peers; a&b"
    support = "<ul><li>one & two</li></ul>"
    result = parse_one(
        tmp_path,
        [{"reasoning": reasoning, "support": support}],
        cdata=frozenset({"reasoning", "support"}),
    )
    assert result.rejects == []
    [record] = result.records
    assert record["reasoning"] == reasoning
    assert record["support"] == support


def test_non_ascii_kept(tmp_path: Path) -> None:
    reasoning = "Revenue of 5 bn € — strong demand in 日本"
    result = parse_one(tmp_path, [{"reasoning": reasoning, "support": "Ünïcödé ✓"}])
    [record] = result.records
    assert record["reasoning"] == reasoning
    assert record["support"] == "Ünïcödé ✓"


def test_utf8_bom_file_parses(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.xml", document([{"reasoning": "naïve €"}]), bom=True)
    result = parse_files([path])
    assert result.rejects == []
    assert [r["reasoning"] for r in result.records] == ["naïve €"]
    assert result.records[0]["source_line"] == 3


def test_latin1_declared_file_parses(tmp_path: Path) -> None:
    text = document([{"reasoning": "Café résumé"}], encoding="ISO-8859-1")
    path = write(tmp_path / "latin.xml", text, codec="latin-1")
    assert "é".encode("latin-1") in path.read_bytes()
    result = parse_files([path])
    assert result.rejects == []
    assert [r["reasoning"] for r in result.records] == ["Café résumé"]


# -------------------------------------------------------------------- duplicates


def test_exact_duplicate_collapsed_and_counted(tmp_path: Path) -> None:
    path = write_doc(
        tmp_path / "tsla.xml",
        [
            {"date": "2024-01-08"},
            {"date": "01/08/2024", "action": "BUY"},  # same content, other spellings
            {"date": "January 8, 2024", "reasoning": "  Detailed analysis. "},
            {"date": "2024-01-09"},
        ],
    )
    result = parse_files([path])
    assert result.rejects == []
    assert [r["uid"] for r in result.records] == ["TSLA-2024-01-08", "TSLA-2024-01-09"]
    assert result.records[0]["source_line"] == thesis_lines(path)[0]
    report = result.report("d")
    assert report["totals"]["duplicates_collapsed"] == 2
    assert report["totals"]["theses_seen"] == 4
    assert file_entry(report, "tsla.xml")["duplicates_collapsed"] == 2
    assert report["balanced"] is True


@pytest.mark.parametrize(
    "other", [{"action": "sell"}, {"reasoning": "A different story."}], ids=["action", "reasoning"]
)
def test_conflicting_duplicates_all_rejected(tmp_path: Path, other: dict) -> None:
    path = write_doc(
        tmp_path / "tsla.xml",
        [{"date": "2024-01-08"}, {"date": "2024-01-09"}, {"date": "01/08/2024", **other}],
    )
    result = parse_files([path])
    lines = thesis_lines(path)
    assert [r["uid"] for r in result.records] == ["TSLA-2024-01-09"]
    assert [(r["reason"], r["source_line"]) for r in result.rejects] == [
        ("conflicting_duplicate", lines[0]),
        ("conflicting_duplicate", lines[2]),
    ]
    report = result.report("d")
    assert report["totals"]["duplicates_collapsed"] == 0
    assert report["reject_reasons"] == {"conflicting_duplicate": 2}
    assert report["balanced"] is True


def test_conflicting_duplicates_across_files(tmp_path: Path) -> None:
    a = write_doc(tmp_path / "a.xml", [{"date": "2024-01-08"}, {"date": "2024-01-10"}])
    b = write_doc(tmp_path / "b.xml", [{"date": "2024-01-08", "action": "hold"}], ticker=" tsla ")
    result = parse_files([a, b])
    assert [r["uid"] for r in result.records] == ["TSLA-2024-01-10"]
    assert [(r["source_file"], r["reason"]) for r in result.rejects] == [
        ("a.xml", "conflicting_duplicate"),
        ("b.xml", "conflicting_duplicate"),
    ]
    report = result.report("d")
    assert file_entry(report, "a.xml")["rejects"] == 1
    assert file_entry(report, "a.xml")["records"] == 1
    assert file_entry(report, "b.xml")["rejects"] == 1
    assert report["balanced"] is True


def test_exact_duplicate_across_files_collapsed(tmp_path: Path) -> None:
    a = write_doc(tmp_path / "a.xml", [{"date": "2024-01-08"}])
    b = write_doc(tmp_path / "b.xml", [{"date": "2024/01/08"}])
    result = parse_files([a, b])
    assert [(r["uid"], r["source_file"]) for r in result.records] == [("TSLA-2024-01-08", "a.xml")]
    report = result.report("d")
    assert file_entry(report, "b.xml")["duplicates_collapsed"] == 1
    assert file_entry(report, "b.xml")["records"] == 0
    assert report["balanced"] is True


def test_same_date_different_tickers_not_duplicates(tmp_path: Path) -> None:
    a = write_doc(tmp_path / "a.xml", [{}], ticker="TSLA")
    b = write_doc(tmp_path / "b.xml", [{}], ticker="AAPL")
    result = parse_files([a, b])
    assert [r["uid"] for r in result.records] == ["TSLA-2024-01-08", "AAPL-2024-01-08"]


def test_conflict_rejects_every_occurrence_whatever_the_order(tmp_path: Path) -> None:
    def outcome(actions: list[str]) -> tuple[int, dict, int]:
        path = write_doc(tmp_path / "o.xml", [{"action": a} for a in actions])
        report = parse_files([path]).report("d")
        t = report["totals"]
        return t["records"], report["reject_reasons"], t["duplicates_collapsed"]

    expected = (0, {"conflicting_duplicate": 3}, 0)
    assert outcome(["buy", "sell", "buy"]) == expected
    assert outcome(["buy", "buy", "sell"]) == expected


def test_a_duplicate_is_compared_with_the_first_exactly(tmp_path: Path) -> None:
    """The first thesis is read back from the spool: one character apart is a conflict."""
    long = "x" * 5000
    theses = [{"date": "2024-01-08", "reasoning": long}, {"date": "2024-01-08", "reasoning": long}]
    theses += [
        {"date": "2024-01-09", "support": long},
        {"date": "2024-01-09", "support": long + "y"},
    ]
    report = parse_one(tmp_path, theses).report("d")
    assert report["totals"]["records"] == 1
    assert report["totals"]["duplicates_collapsed"] == 1
    assert report["reject_reasons"] == {"conflicting_duplicate": 2}


def test_write_records_writes_what_iter_records_yields(tmp_path: Path) -> None:
    """Conflicts first, in the middle and last: the block copy skips exactly their lines."""
    dates = ["2024-01-08", "2024-01-09", "2024-01-10", "2024-01-11", "2024-01-12"]
    theses = [{"date": d, "reasoning": f"On {d}."} for d in dates]
    theses += [{"date": d, "action": "sell"} for d in (dates[0], dates[2], dates[4])]
    result = parse_one(tmp_path, theses)
    assert [r["as_of_date"] for r in result.records] == [dates[1], dates[3]]
    with open(tmp_path / "out.jsonl", "wb") as handle:
        result.write_records(handle)
    assert (tmp_path / "out.jsonl").read_bytes() == b"".join(result.iter_records())
    clean = parse_one(tmp_path, theses[:5])
    with open(tmp_path / "clean.jsonl", "wb") as handle:
        clean.write_records(handle)
    written = (tmp_path / "clean.jsonl").read_text().splitlines()
    assert [json.loads(line)["as_of_date"] for line in written] == dates


# --------------------------------------------------------------- file-level faults


def test_truncated_file_keeps_complete_theses(tmp_path: Path) -> None:
    text = document([{"date": "2024-01-08"}, {"date": "2024-01-09"}, {"date": "2024-01-10"}])
    cut = text.index("<reasoning>", text.index("2024-01-10")) + len("<reaso")
    path = write(tmp_path / "tsla.xml", text[:cut])
    result = parse_files([path])
    lines = thesis_lines(path)
    last_line = text[:cut].count("\n") + 1
    assert [r["uid"] for r in result.records] == ["TSLA-2024-01-08", "TSLA-2024-01-09"]
    assert [r["source_line"] for r in result.records] == lines[:2]
    thesis_rejects = [r for r in result.rejects if r["scope"] == "thesis"]
    assert [(r["reason"], r["source_line"]) for r in thesis_rejects] == [
        ("incomplete_thesis", lines[2])
    ]
    report = result.report("d")
    entry = file_entry(report, "tsla.xml")
    assert entry["status"] == "partial"
    assert entry["fault"]["reason"] == "malformed_xml"
    assert entry["fault"]["line"] == last_line
    assert (entry["theses_seen"], entry["records"], entry["rejects"]) == (3, 2, 1)
    assert report["totals"]["files_partial"] == 1
    assert report["file_faults"] == {"malformed_xml": 1}
    assert report["balanced"] is True


def test_malformed_mid_file_reports_line(tmp_path: Path) -> None:
    good = document([{"date": "2024-01-08"}], close=False)
    bad_line = good.count("\n") + 1
    text = good + "  <junk attr=>\n" + thesis_xml({"date": "2024-01-09"}) + "</stock-theses>\n"
    path = write(tmp_path / "tsla.xml", text)
    result = parse_files([path])
    assert [r["uid"] for r in result.records] == ["TSLA-2024-01-08"]
    entry = file_entry(result.report("d"), "tsla.xml")
    assert entry["status"] == "partial"
    assert entry["fault"]["reason"] == "malformed_xml"
    assert entry["fault"]["line"] == bad_line
    fault, unread = result.rejects
    assert (fault["reason"], fault["scope"], fault["source_line"]) == (
        "malformed_xml",
        "file",
        bad_line,
    )
    # the thesis after the fault was never read: counted, not lost
    assert (unread["reason"], unread["source_line"]) == ("unread_after_fault", bad_line + 1)
    assert entry["theses_seen"] == 2


def test_mismatched_tag_inside_thesis_is_incomplete(tmp_path: Path) -> None:
    text = document([{"date": "2024-01-08"}], close=False)
    open_line = text.count("\n") + 1
    text += "  <thesis>\n    <as-of-date>2024-01-09</as-of-date>\n    </oops>\n</stock-theses>\n"
    path = write(tmp_path / "tsla.xml", text)
    result = parse_files([path])
    assert [r["uid"] for r in result.records] == ["TSLA-2024-01-08"]
    assert [(r["reason"], r["source_line"], r["scope"]) for r in result.rejects] == [
        ("incomplete_thesis", open_line, "thesis"),
        ("malformed_xml", open_line + 2, "file"),
    ]


@pytest.mark.parametrize(
    ("content", "reason", "status"),
    [
        (b"", "empty_file", "failed"),
        (b"ticker,date,action\nTSLA,2024-01-08,buy\n", "not_xml", "failed"),
        (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<stock-theses ticker="BAD">\n'
            b"<thesis><as-of-date>2024-01-08</as-of-date><reasoning>caf\xe9</reasoning>"
            b"<action>buy</action></thesis>\n</stock-theses>\n",
            "encoding_error",
            "partial",  # the fault came inside a thesis: the file was read up to it
        ),
        (
            b'<?xml version="1.0"?>\n<portfolio ticker="TSLA"><thesis><as-of-date>2024-01-08'
            b"</as-of-date><reasoning>r</reasoning><action>buy</action></thesis></portfolio>\n",
            "unexpected_root",
            "failed",
        ),
        (b'<?xml version="1.0"?>\n<portfolio/>\n', "unexpected_root", "failed"),
    ],
    ids=["empty", "csv", "latin1-in-utf8", "wrong-root", "wrong-root-no-thesis"],
)
def test_bad_file_reported_others_still_parsed(
    tmp_path: Path, content: bytes, reason: str, status: str
) -> None:
    bad = write(tmp_path / "bad.xml", content)
    good1 = write_doc(tmp_path / "aaa.xml", [{"date": "2024-01-08"}], ticker="AAA")
    good2 = write_doc(tmp_path / "zzz.xml", [{"date": "2024-01-09"}], ticker="ZZZ")
    result = parse_files([good1, bad, good2])
    assert [r["uid"] for r in result.records] == ["AAA-2024-01-08", "ZZZ-2024-01-09"]
    file_rejects = [r for r in result.rejects if r["scope"] == "file"]
    assert [(r["source_file"], r["reason"]) for r in file_rejects] == [("bad.xml", reason)]
    report = result.report("d")
    entry = file_entry(report, "bad.xml")
    assert entry["status"] == status
    assert entry["fault"]["reason"] == reason
    assert entry["records"] == 0
    assert report["totals"][f"files_{status}"] == 1
    assert report["totals"]["files_ok"] == 2
    assert report["file_faults"] == {reason: 1}
    assert report["balanced"] is True


def test_encoding_error_after_valid_thesis(tmp_path: Path) -> None:
    head = document([{"date": "2024-01-08"}], close=False).encode()
    tail = (
        b"  <thesis>\n    <as-of-date>2024-01-09</as-of-date>\n    <reasoning>caf\xe9</reasoning>\n"
        b"  </thesis>\n</stock-theses>\n"
    )
    path = write(tmp_path / "tsla.xml", head + tail)
    result = parse_files([path])
    second = head.count(b"\n") + 1
    assert [r["uid"] for r in result.records] == ["TSLA-2024-01-08"]
    assert [(r["reason"], r["source_line"]) for r in result.rejects] == [
        ("incomplete_thesis", second),
        ("encoding_error", second + 2),
    ]
    assert result.report("d")["balanced"] is True


# ------------------------------------------------------------------------ tickers


def test_ticker_from_filename_when_attribute_missing(tmp_path: Path) -> None:
    path = write_doc(tmp_path / "nvda.xml", [{}], ticker=None)
    result = parse_files([path])
    assert [(r["ticker"], r["uid"]) for r in result.records] == [("NVDA", "NVDA-2024-01-08")]
    entry = file_entry(result.report("d"), "nvda.xml")
    assert entry["ticker"] == "NVDA"
    assert entry["ticker_from_filename"] is True


@pytest.mark.parametrize("attr", ["", "   "])
def test_ticker_from_filename_when_attribute_blank(tmp_path: Path, attr: str) -> None:
    path = write_doc(tmp_path / "amd.xml", [{}], ticker=attr)
    result = parse_files([path])
    assert [r["ticker"] for r in result.records] == ["AMD"]
    assert file_entry(result.report("d"), "amd.xml")["ticker_from_filename"] is True


def test_ticker_attribute_upper_cased_and_stripped(tmp_path: Path) -> None:
    path = write_doc(tmp_path / "whatever.xml", [{}], ticker="  tsla ")
    result = parse_files([path])
    assert [r["uid"] for r in result.records] == ["TSLA-2024-01-08"]
    entry = file_entry(result.report("d"), "whatever.xml")
    assert entry["ticker"] == "TSLA"
    assert "ticker_from_filename" not in entry


# ------------------------------------------------------------------ records contract


def test_record_contract_and_order(tmp_path: Path) -> None:
    b = write_doc(
        tmp_path / "b.xml",
        [{"date": "2024-01-10", "action": "sell"}, {"date": "2024-01-02", "reasoning": "R2"}],
        ticker="BBB",
    )
    a = write_doc(tmp_path / "a.xml", [{"date": "2024-01-05", "support": "S"}], ticker="AAA")
    result = parse_files([b, a])  # the order given, not alphabetical
    assert [list(r) for r in result.records] == [RECORD_KEYS] * 3
    lines_b = thesis_lines(b)
    assert result.records == [
        {
            "uid": "BBB-2024-01-10",
            "ticker": "BBB",
            "as_of_date": "2024-01-10",
            "action": "SELL",
            "reasoning": "Detailed analysis.",
            "support": "Supporting points.",
            "source_file": "b.xml",
            "source_line": lines_b[0],
        },
        {
            "uid": "BBB-2024-01-02",
            "ticker": "BBB",
            "as_of_date": "2024-01-02",
            "action": "BUY",
            "reasoning": "R2",
            "support": "Supporting points.",
            "source_file": "b.xml",
            "source_line": lines_b[1],
        },
        {
            "uid": "AAA-2024-01-05",
            "ticker": "AAA",
            "as_of_date": "2024-01-05",
            "action": "BUY",
            "reasoning": "Detailed analysis.",
            "support": "S",
            "source_file": "a.xml",
            "source_line": 3,
        },
    ]
    assert lines_b == [3, 9]


def test_source_line_is_thesis_start_with_extra_markup(tmp_path: Path) -> None:
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<!-- a comment\n spanning lines -->\n"
        '<stock-theses ticker="TSLA">\n'
        "\n"
        "  <?pi something?>\n"
        "  <thesis><as-of-date>2024-01-08</as-of-date><reasoning>r</reasoning>"
        "<action>buy</action></thesis>\n"
        "  <thesis>\n    <as-of-date>\n2024-01-09\n</as-of-date>\n"
        "    <reasoning>multi\nline</reasoning><action>buy</action>\n  </thesis>\n"
        "</stock-theses>\n"
    )
    path = write(tmp_path / "tsla.xml", text)
    result = parse_files([path])
    assert [(r["as_of_date"], r["source_line"]) for r in result.records] == [
        ("2024-01-08", 7),
        ("2024-01-09", 8),
    ]
    assert result.records[1]["reasoning"] == "multi\nline"


def test_source_line_of_multiline_start_tag(tmp_path: Path) -> None:
    """Documented: source_line is the line where the <thesis ...> start tag closes (libxml2's
    node line); it differs from where the tag opens only when the tag spans several lines."""
    text = (
        '<?xml version="1.0"?>\n<stock-theses ticker="TSLA">\n'
        '  <thesis\n      id="1"\n  >\n'
        "<as-of-date>2024-01-08</as-of-date><reasoning>r</reasoning><action>buy</action>"
        "</thesis>\n</stock-theses>\n"
    )
    result = parse_files([write(tmp_path / "tsla.xml", text)])
    assert [r["source_line"] for r in result.records] == [5]


def test_uid_stable_across_runs(tmp_path: Path) -> None:
    a = write_doc(tmp_path / "a.xml", [{"date": "2024-01-08"}, {"date": "Jan 9 2024"}])
    b = write_doc(tmp_path / "b.xml", [{"date": "2024-01-08"}], ticker="AAPL")
    first = parse_files([a, b])
    second = parse_files([a, b])
    assert [r["uid"] for r in first.records] == [
        "TSLA-2024-01-08",
        "TSLA-2024-01-09",
        "AAPL-2024-01-08",
    ]
    assert first.records == second.records
    assert first.rejects == second.rejects
    assert first.report("d") == second.report("d")


def test_reject_contract(tmp_path: Path) -> None:
    long_text = "x" * 1000
    good = write_doc(
        tmp_path / "tsla.xml",
        [
            {"date": "2024-01-08", "action": long_text, "reasoning": long_text},
            {"date": "nope", "support": long_text},
        ],
    )
    broken = write(tmp_path / "broken.xml", "<stock-theses ticker='X'>" + "<" * 500)
    result = parse_files([good, broken])
    assert len(result.rejects) == 3
    for reject in result.rejects:
        assert set(reject) == REJECT_KEYS
        assert isinstance(reject["source_line"], int)
        assert isinstance(reject["excerpt"], str)
        assert len(reject["excerpt"]) <= 200
        assert reject["scope"] in {"thesis", "file"}
        assert reject["reason"] in REASONS
    lines = thesis_lines(good)
    assert [
        (r["source_file"], r["reason"], r["scope"], r["source_line"]) for r in result.rejects
    ] == [
        ("broken.xml", "malformed_xml", "file", 1),
        ("tsla.xml", "unknown_action", "thesis", lines[0]),
        ("tsla.xml", "invalid_date", "thesis", lines[1]),
    ]
    assert "2024-01-08" in result.rejects[1]["excerpt"]
    assert "nope" in result.rejects[2]["excerpt"]


def test_names_callable_and_opener(tmp_path: Path) -> None:
    path = write_doc(tmp_path / "tsla.xml", [{}])
    opened: list[Path] = []

    def opener(p: Path) -> Any:
        opened.append(p)
        return p.open("rb")

    result = parse_files([path], names=lambda p: f"raw/{p.name}", opener=opener)
    assert opened == [path]
    assert [r["source_file"] for r in result.records] == ["raw/tsla.xml"]
    assert [f["file"] for f in result.report("d")["files"]] == ["raw/tsla.xml"]


# ------------------------------------------------------------ accounting identity


def test_mixed_corpus_accounting(tmp_path: Path) -> None:
    a = write_doc(
        tmp_path / "a.xml",
        [
            {"date": "2024-01-02"},  # record
            {"date": "2024-01-03", "action": "Strong Sell"},  # record
            {"date": "2024-02-30"},  # invalid_date
            {"date": OMIT},  # missing_date
            {"date": "2024-01-04", "action": "error"},  # action_error
            {"date": "2024-01-05", "action": "accumulate"},  # unknown_action
            {"date": "2024-01-06", "action": ""},  # missing_action
            {"date": "2024-01-07", "reasoning": " "},  # missing_reasoning
            {"date": "01/02/2024"},  # exact duplicate of the first
            {"date": "2024-01-10"},  # conflicts with b.xml
        ],
        ticker="AAA",
    )
    b = write_doc(
        tmp_path / "b.xml",
        [{"date": "2024-01-10", "action": "hold"}, {"date": "2024-01-11"}],
        ticker="aaa",
    )
    trunc_text = document([{"date": "2024-01-02"}, {"date": "2024-01-03"}], ticker="CCC")
    trunc = write(tmp_path / "c.xml", trunc_text[: trunc_text.rindex("<action>") + 3])
    empty = write(tmp_path / "d.xml", b"")
    hostile = write_doc(
        tmp_path / "e.xml",
        [{"reasoning": "&x;"}],
        doctype='<!DOCTYPE stock-theses [<!ENTITY x "boom">]>',
    )
    result = parse_files([a, b, trunc, empty, hostile])
    report = result.report("input")
    t = report["totals"]
    assert report["input_dir"] == "input"
    assert report["balanced"] is True
    assert t == {
        "files": 5,
        "files_ok": 2,
        "files_partial": 1,
        "files_failed": 2,
        "theses_seen": 14,
        "records": 4,
        "rejects": 9,
        "duplicates_collapsed": 1,
    }
    assert t["theses_seen"] == t["records"] + t["rejects"] + t["duplicates_collapsed"]
    for entry in report["files"]:
        assert entry["theses_seen"] == (
            entry["records"] + entry["rejects"] + entry["duplicates_collapsed"]
        ), entry
    assert report["reject_reasons"] == {
        "action_error": 1,
        "conflicting_duplicate": 2,
        "incomplete_thesis": 1,
        "invalid_date": 1,
        "missing_action": 1,
        "missing_date": 1,
        "missing_reasoning": 1,
        "unknown_action": 1,
    }
    assert report["file_faults"] == {"empty_file": 1, "forbidden_dtd": 1, "malformed_xml": 1}
    assert [r["uid"] for r in result.records] == [
        "AAA-2024-01-02",
        "AAA-2024-01-03",
        "AAA-2024-01-11",
        "CCC-2024-01-02",
    ]
    assert report["records_by_ticker"] == {"AAA": 3, "CCC": 1}
    assert report["records_by_action"] == {
        "STRONG_BUY": 0,
        "BUY": 3,
        "HOLD": 0,
        "SELL": 0,
        "STRONG_SELL": 1,
    }
    assert report["date_range"] == {"first": "2024-01-02", "last": "2024-01-11"}
    assert [(f["file"], f["status"]) for f in report["files"]] == [
        ("a.xml", "ok"),
        ("b.xml", "ok"),
        ("c.xml", "partial"),
        ("d.xml", "failed"),
        ("e.xml", "failed"),
    ]
    per_file = {f["file"]: (f["theses_seen"], f["records"], f["rejects"]) for f in report["files"]}
    assert per_file == {
        "a.xml": (10, 2, 7),
        "b.xml": (2, 1, 1),
        "c.xml": (2, 1, 1),
        "d.xml": (0, 0, 0),
        "e.xml": (0, 0, 0),
    }
    assert len(result.rejects) == t["rejects"] + 3
    assert result.thesis_rejects == 9
    json.dumps(report)  # serialisable


def test_empty_input_report(tmp_path: Path) -> None:
    report = parse_files([]).report("d")
    assert report["balanced"] is True
    assert report["totals"]["theses_seen"] == 0
    assert report["date_range"] == {"first": None, "last": None}
    assert report["files"] == []


# ------------------------------------------------------------------- hostile XML


def billion_laughs_doctype(levels: int = 10) -> str:
    ents = ['<!ENTITY lol0 "lol">']
    for i in range(1, levels):
        ents.append(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">')
    return "<!DOCTYPE stock-theses [\n" + "\n".join(ents) + "\n]>"


_SUBPROCESS_PARSE = """
import json, sys
from pathlib import Path
from charlie.parsing import parse_files
r = parse_files([Path(p) for p in sys.argv[1:]])
print(json.dumps({"records": len(r.records), "reasons": [x["reason"] for x in r.rejects]}))
"""


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def run_limited(*paths: Path) -> tuple[dict, float]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS_PARSE, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=_limit_memory,
        check=False,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), elapsed


@pytest.mark.parametrize("where", ["reasoning", "support"])
def test_billion_laughs_bounded(tmp_path: Path, where: str) -> None:
    path = write_doc(
        tmp_path / "lol.xml",
        [{where: "&lol9;"}, {"date": "2024-01-09"}],
        doctype=billion_laughs_doctype(),
    )
    out, elapsed = run_limited(path)
    assert out == {"records": 0, "reasons": ["forbidden_dtd"]}
    assert elapsed < 20


def test_billion_laughs_in_process_report(tmp_path: Path) -> None:
    path = write_doc(
        tmp_path / "lol.xml", [{"reasoning": "&lol9;"}], doctype=billion_laughs_doctype()
    )
    result = parse_files([path])
    assert result.records == []
    assert [(r["reason"], r["scope"]) for r in result.rejects] == [("forbidden_dtd", "file")]
    entry = file_entry(result.report("d"), "lol.xml")
    assert entry["status"] == "failed"
    assert entry["fault"]["reason"] == "forbidden_dtd"
    assert "lollollol" not in json.dumps([result.rejects, result.report("d")])


@pytest.mark.parametrize("kind", ["billion-laughs", "external-entity"])
def test_entity_in_root_attribute_is_forbidden_dtd(tmp_path: Path, kind: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t")
    if kind == "billion-laughs":
        doctype, ref = billion_laughs_doctype(), "&lol9;"
    else:
        doctype, ref = f'<!DOCTYPE x [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>', "&xxe;"
    path = write_doc(tmp_path / "lol.xml", [{}], doctype=doctype, ticker=ref)
    out, _ = run_limited(path)
    assert out == {"records": 0, "reasons": ["forbidden_dtd"]}


@pytest.fixture
def secret(tmp_path: Path) -> tuple[Path, str]:
    token = f"SECRET-{uuid.uuid4().hex}"
    path = tmp_path / "secret.txt"
    path.write_text(token + "\n")
    return path, token


def assert_no_leak(result: Any, token: str) -> None:
    blob = json.dumps(
        {"records": result.records, "rejects": result.rejects, "report": result.report("d")}
    )
    assert token not in blob


@pytest.mark.parametrize("variant", ["general", "parameter", "utf16", "both"])
def test_external_entity_to_local_file(
    tmp_path: Path, secret: tuple[Path, str], variant: str
) -> None:
    secret_path, token = secret
    uri = secret_path.as_uri()
    if variant == "parameter":
        doctype = f'<!DOCTYPE stock-theses [<!ENTITY % p SYSTEM "{uri}">%p;]>'
        reasoning = "plain"
    elif variant == "both":
        doctype = (
            f'<!DOCTYPE stock-theses [<!ENTITY % p SYSTEM "{uri}"><!ENTITY xxe SYSTEM "{uri}">%p;]>'
        )
        reasoning = "&xxe;"
    else:
        doctype = f'<!DOCTYPE x [<!ENTITY xxe SYSTEM "{uri}">]>'
        reasoning = "&xxe;"
    if variant == "utf16":
        text = document([{"reasoning": reasoning}], encoding="UTF-16", doctype=doctype)
        path = write(tmp_path / "tsla.xml", text, codec="utf-16-le", bom=True)
    else:
        path = write_doc(tmp_path / "tsla.xml", [{"reasoning": reasoning}], doctype=doctype)
    result = parse_files([path])
    assert result.records == []
    assert [(r["reason"], r["scope"]) for r in result.rejects] == [("forbidden_dtd", "file")]
    assert result.rejects[0]["source_line"] == 3
    assert_no_leak(result, token)


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        body = b'<!ENTITY x "PWNED-BY-DTD">'
        self.send_response(200)
        self.send_header("Content-Type", "application/xml-dtd")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[int, list[str]]]:
    handler = type("Handler", (_CountingHandler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_server_fixture_counts_requests(http_server: tuple[int, list[str]]) -> None:
    import urllib.request

    port, requests = http_server
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/probe", timeout=5) as resp:
        assert resp.read() == b'<!ENTITY x "PWNED-BY-DTD">'
    assert requests == ["/probe"]


@pytest.mark.parametrize("variant", ["remote-dtd", "remote-entity", "remote-parameter-entity"])
def test_remote_dtd_and_entities_never_fetched(
    tmp_path: Path, http_server: tuple[int, list[str]], variant: str
) -> None:
    port, requests = http_server
    base = f"http://127.0.0.1:{port}"
    doctype, reasoning = {
        "remote-dtd": (f'<!DOCTYPE stock-theses SYSTEM "{base}/evil.dtd">', "&x;"),
        "remote-entity": (f'<!DOCTYPE stock-theses [<!ENTITY ext SYSTEM "{base}/x">]>', "&ext;"),
        "remote-parameter-entity": (
            f'<!DOCTYPE stock-theses [<!ENTITY % p SYSTEM "{base}/p.dtd">%p;]>',
            "&x;",
        ),
    }[variant]
    path = write_doc(tmp_path / "tsla.xml", [{"reasoning": reasoning}], doctype=doctype)
    result = parse_files([path])
    assert result.records == []
    assert [(r["reason"], r["scope"]) for r in result.rejects] == [("forbidden_dtd", "file")]
    assert requests == []
    assert_no_leak(result, "PWNED-BY-DTD")


def test_hostile_file_does_not_stop_valid_neighbours(
    tmp_path: Path, secret: tuple[Path, str], http_server: tuple[int, list[str]]
) -> None:
    secret_path, token = secret
    port, requests = http_server
    good_a = write_doc(tmp_path / "aaa.xml", [{"date": "2024-01-08"}], ticker="AAA")
    lol = write_doc(
        tmp_path / "bbb.xml", [{"reasoning": "&lol9;"}], doctype=billion_laughs_doctype()
    )
    xxe = write_doc(
        tmp_path / "ccc.xml",
        [{"reasoning": "&xxe;"}],
        doctype=f'<!DOCTYPE x [<!ENTITY xxe SYSTEM "{secret_path.as_uri()}">]>',
    )
    remote = write_doc(
        tmp_path / "ddd.xml",
        [{}],
        doctype=f'<!DOCTYPE stock-theses SYSTEM "http://127.0.0.1:{port}/evil.dtd">',
    )
    good_z = write_doc(tmp_path / "zzz.xml", [{"date": "2024-01-09"}], ticker="ZZZ")
    paths = sorted(tmp_path.glob("*.xml"))
    assert paths == [good_a, lol, xxe, remote, good_z]
    result = parse_files(paths)
    assert [r["uid"] for r in result.records] == ["AAA-2024-01-08", "ZZZ-2024-01-09"]
    assert [(r["source_file"], r["reason"]) for r in result.rejects] == [
        ("bbb.xml", "forbidden_dtd"),
        ("ccc.xml", "forbidden_dtd"),
        ("ddd.xml", "forbidden_dtd"),
    ]
    report = result.report("d")
    assert report["file_faults"] == {"forbidden_dtd": 3}
    assert report["totals"]["files_ok"] == 2
    assert report["balanced"] is True
    assert requests == []
    assert_no_leak(result, token)


def test_hostile_and_valid_in_subprocess_with_memory_limit(tmp_path: Path) -> None:
    good = write_doc(tmp_path / "aaa.xml", [{}], ticker="AAA")
    lol = write_doc(
        tmp_path / "bbb.xml", [{"reasoning": "&lol9;"}], doctype=billion_laughs_doctype()
    )
    out, elapsed = run_limited(good, lol)
    assert out == {"records": 1, "reasons": ["forbidden_dtd"]}
    assert elapsed < 20


def test_a_thesis_off_the_common_shape_reads_as_the_field_loop_reads_it(tmp_path: Path) -> None:
    """Repeated fields (the first counts), inline markup in a field (its text joined), extra
    children and padding: the same record, and a reject's excerpt lists the fields in
    document order."""
    text = document([]).replace(
        "</stock-theses>",
        "  <thesis>\n"
        "    <note>ignored</note>\n"
        "    <action>  Strong Buy </action>\n"
        "    <as-of-date> 2024-01-09 </as-of-date>\n"
        "    <reasoning>Rates <b>fall</b> soon.</reasoning>\n"
        "    <action>sell</action>\n"
        "    <as-of-date>2024-01-10</as-of-date>\n"
        "  </thesis>\n"
        "  <thesis>\n"
        "    <reasoning>r</reasoning><as-of-date>someday</as-of-date><action>buy</action>\n"
        "    <reasoning>second</reasoning>\n"
        "  </thesis>\n"
        "</stock-theses>",
    )
    result = parse_files([write(tmp_path / "tsla.xml", text)])
    (record,) = result.records
    assert record == {
        "uid": "TSLA-2024-01-09",
        "ticker": "TSLA",
        "as_of_date": "2024-01-09",
        "action": "STRONG_BUY",
        "reasoning": "Rates fall soon.",
        "support": "",
        "source_file": "tsla.xml",
        "source_line": 3,
    }
    (reject,) = result.rejects
    assert reject["reason"] == "invalid_date"
    assert reject["excerpt"] == "reasoning='r' as-of-date='someday' action='buy'"
