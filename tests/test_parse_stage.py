"""`charlie parse` as a user runs it: outputs, summary, logs, exit codes, atomic writes."""

import json
import uuid
from pathlib import Path

import pytest

import charlie.stages.parse as parse_stage
from charlie.cli import main

from .conftest import REPO, SAMPLES, read_jsonl

GOOD = """<?xml version="1.0" encoding="UTF-8"?>
<stock-theses ticker="{ticker}" generated-by="test" version="1.0">
  <thesis>
    <as-of-date>2024-01-08</as-of-date>
    <reasoning>Trend up.</reasoning>
    <action>{action}</action>
    <support>- close above SMA20</support>
  </thesis>
</stock-theses>
"""


def outputs(tmp_path: Path) -> list[str]:
    out = tmp_path / "out"
    return [
        "--out", str(out / "records.jsonl"),
        "--rejects", str(out / "rejects.jsonl"),
        "--report", str(out / "parse_report.json"),
    ]  # fmt: skip


def xml_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    directory = tmp_path / "xml"
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def test_demo_parse_step_on_the_bundled_sample(tmp_path, capsys, sample_manifest):
    args = ["parse", "--params", str(REPO / "params.yaml"), "--input-dir", str(SAMPLES / "xml")]
    assert main(args + outputs(tmp_path)) == 0
    out = tmp_path / "out"
    records = read_jsonl(out / "records.jsonl")
    rejects = read_jsonl(out / "rejects.jsonl")
    report = json.loads((out / "parse_report.json").read_text())
    expected = sample_manifest["expected_parse"]
    assert len(records) == expected["records"] == report["totals"]["records"]
    assert report["balanced"] is True
    assert report["reject_reasons"] == expected["rejects"]
    assert len(rejects) == sum(expected["rejects"].values())
    assert report["totals"]["theses_seen"] == sample_manifest["theses_written"]
    assert report["records_by_ticker"].keys() == sample_manifest["tickers"].keys()
    assert {r["action"] for r in records} == {"STRONG_BUY", "BUY", "HOLD", "SELL", "STRONG_SELL"}
    assert len({r["uid"] for r in records}) == len(records)

    err = capsys.readouterr().err
    assert f"theses seen {report['totals']['theses_seen']} = records {len(records)}" in err
    assert "rejected    " in err and "action_error" in err
    log = next((tmp_path / "logs").glob("parse-*.log")).read_text()
    assert "theses seen" in log and "wrote" in log


def test_exit_0_with_rejects_and_exit_1_when_strict(tmp_path):
    directory = xml_dir(tmp_path, {"A.xml": GOOD.format(ticker="A", action="buy"),
                                   "B.xml": GOOD.format(ticker="B", action="error")})  # fmt: skip
    assert main(["parse", "--input-dir", str(directory), *outputs(tmp_path)]) == 0
    assert main(["parse", "--input-dir", str(directory), "--strict", *outputs(tmp_path)]) == 1
    # strict still writes the outputs, so the user can see what was rejected
    (reject,) = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert reject["reason"] == "action_error" and reject["source_file"] == "B.xml"


def test_strict_is_also_read_from_params(tmp_path):
    directory = xml_dir(tmp_path, {"B.xml": GOOD.format(ticker="B", action="error"),
                                   "A.xml": GOOD.format(ticker="A", action="hold")})  # fmt: skip
    params = tmp_path / "params.yaml"
    params.write_text("parse:\n  strict: true\n")
    assert (
        main(["parse", "--params", str(params), "--input-dir", str(directory), *outputs(tmp_path)])
        == 1
    )


def test_strict_and_clean_is_exit_0(tmp_path):
    directory = xml_dir(tmp_path, {"A.xml": GOOD.format(ticker="A", action="Strong Buy")})
    assert main(["parse", "--input-dir", str(directory), "--strict", *outputs(tmp_path)]) == 0
    (record,) = read_jsonl(tmp_path / "out" / "records.jsonl")
    assert record["action"] == "STRONG_BUY" and record["uid"] == "A-2024-01-08"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (None, "input directory {dir} does not exist."),
        ({}, "input directory {dir} holds no *.xml file."),
        ({"notes.txt": "hello"}, "input directory {dir} holds no *.xml file."),
        (
            {"A.xml": GOOD.format(ticker="A", action="error")},
            "no valid thesis in {dir} (1 seen, 1 rejected)",
        ),
        ({"A.xml": ""}, "no valid thesis in {dir} (0 seen, 1 rejected)"),
    ],
)
def test_exit_2_with_one_sentence_and_nothing_written(tmp_path, capsys, files, message):
    directory = tmp_path / "xml"
    if files is not None:
        directory = xml_dir(tmp_path, files)
    assert main(["parse", "--input-dir", str(directory), *outputs(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("charlie parse: error: " + message.format(dir=directory))
    assert not (tmp_path / "out").exists()


def test_a_failed_write_leaves_previous_outputs_intact(tmp_path, monkeypatch, capsys):
    directory = xml_dir(tmp_path, {"A.xml": GOOD.format(ticker="A", action="buy")})
    assert main(["parse", "--input-dir", str(directory), *outputs(tmp_path)]) == 0
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    (directory / "B.xml").write_text(GOOD.format(ticker="B", action="sell"))
    real_write = parse_stage._write_jsonl
    calls = []

    def crash_on_the_rejects(path, rows):  # the records are written by then
        calls.append(path)
        real_write(path, rows)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(parse_stage, "_write_jsonl", crash_on_the_rejects)
    assert main(["parse", "--input-dir", str(directory), *outputs(tmp_path)]) == 2
    assert capsys.readouterr().err.endswith("charlie parse: error: No space left on device.\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files either


def test_an_unwritable_output_is_one_sentence(tmp_path, capsys):
    directory = xml_dir(tmp_path, {"A.xml": GOOD.format(ticker="A", action="buy")})
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["parse", "--input-dir", str(directory), "--out", str(blocker / "r.jsonl")])
    assert code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("charlie parse: error: ") and str(blocker) in err


def test_hostile_file_is_reported_and_its_secret_never_leaks(tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    token = f"TOKEN-{uuid.uuid4()}"
    secret.write_text(token)
    evil = (
        '<?xml version="1.0"?>\n'
        f'<!DOCTYPE stock-theses [<!ENTITY xxe SYSTEM "file://{secret}">]>\n'
        '<stock-theses ticker="EVIL"><thesis><as-of-date>2024-01-08</as-of-date>'
        "<reasoning>&xxe;</reasoning><action>buy</action><support>&xxe;</support></thesis>"
        "</stock-theses>\n"
    )
    directory = xml_dir(
        tmp_path, {"A.xml": GOOD.format(ticker="A", action="buy"), "EVIL.xml": evil}
    )
    assert main(["parse", "--input-dir", str(directory), *outputs(tmp_path)]) == 0
    out = tmp_path / "out"
    report = json.loads((out / "parse_report.json").read_text())
    (evil_entry,) = [f for f in report["files"] if f["file"] == "EVIL.xml"]
    assert evil_entry["status"] == "failed" and evil_entry["fault"]["reason"] == "forbidden_dtd"
    assert report["totals"]["records"] == 1 and report["file_faults"] == {"forbidden_dtd": 1}
    captured = capsys.readouterr()
    texts = [p.read_text() for p in out.iterdir()]
    texts += [p.read_text() for p in (tmp_path / "logs").iterdir()]
    texts += [captured.out, captured.err]
    assert "forbidden_dtd" in captured.err
    assert all(token not in text for text in texts)
