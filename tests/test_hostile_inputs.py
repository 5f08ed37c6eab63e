"""What Charlie survives: bad input outside XML's own attacks (issue 14), one case per test.

Read as a list: each test names the input an attacker or a careless user gives, and the
behaviour Charlie ends in. The hostile-XML set (DTDs, entities, remote fetches) lives in
test_parsing.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from charlie.cli import main
from charlie.errors import CharlieError
from charlie.parsing import parse_files
from charlie.prices.base import NotAvailable
from charlie.prices.cache import CachedProvider
from charlie.prices.files import FileProvider
from charlie.prices.service import fetch_prices
from charlie.tickers import valid_ticker

from .conftest import SAMPLES
from .test_parsing import document, thesis_xml, write

D = dt.date
THESIS = thesis_xml({})


def identity_holds(report: dict) -> bool:
    """theses_seen = records + rejects + duplicates_collapsed, per file and in total."""
    return report["balanced"]


# ------------------------------------------------------------------- tickers are not paths


@pytest.mark.parametrize("ticker", ["BRK.B", "^GSPC", "EURUSD=X", "ACME.US", "BF-B", "X_1"])
def test_real_tickers_are_tickers(ticker):
    assert valid_ticker(ticker)


@pytest.mark.parametrize(
    "ticker", ["../../../../ZZLEAK", "A/B", "..", ".", "A B", "", "X" * 21, "A\x00B", "É"]
)
def test_a_path_or_junk_is_not_a_ticker(ticker):
    assert not valid_ticker(ticker)


def test_a_ticker_attribute_that_is_a_path_rejects_the_file_and_keeps_the_others(tmp_path):
    bad = write(tmp_path / "leak.xml", document([{}], ticker="../../../../ZZLEAK"))
    good = write(tmp_path / "acme.xml", document([{}], ticker="ACME"))
    result = parse_files([bad, good])
    assert [r["ticker"] for r in result.records] == ["ACME"]
    (fault,) = result.file_faults
    assert fault["reason"] == "invalid_ticker" and fault["source_file"] == "leak.xml"
    assert "ZZLEAK" in fault["excerpt"]


def test_a_file_name_that_is_not_a_ticker_is_rejected(tmp_path):
    path = write(tmp_path / "my theses.xml", document([{}], ticker=None))
    result = parse_files([path])
    assert not result.records and result.file_faults[0]["reason"] == "invalid_ticker"


def test_prices_tickers_flag_refuses_a_path_and_writes_nothing(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(f"prices:\n  providers: [file]\n  file_dir: {SAMPLES / 'prices'}\n"
                      f"  cache_dir: {tmp_path / 'cache'}\n")  # fmt: skip
    argv = ["prices", "--params", str(params), "--tickers", "ACME,../../../ESCAPED",
            "--start", "2024-01-02", "--end", "2024-01-19"]  # fmt: skip
    assert main(argv) == 2  # the user's input
    err = capsys.readouterr().err
    assert "invalid ticker(s) '../../../ESCAPED'" in err and "Traceback" not in err
    assert not list(tmp_path.parent.rglob("ESCAPED*"))


def test_no_provider_builds_a_path_outside_its_directory(tmp_path):
    """Defence in depth: the file provider and the cache check the path they build."""
    outside = tmp_path / "OUTSIDEPRICES.csv"
    pd.read_csv(SAMPLES / "prices" / "ACME.csv").to_csv(outside, index=False)
    inner = tmp_path / "prices" / "deep"
    inner.mkdir(parents=True)
    with pytest.raises(CharlieError, match="refusing the file"):
        FileProvider(inner).fetch("../../OUTSIDEPRICES", D(2024, 1, 2), D(2024, 1, 31))
    cache = CachedProvider(FileProvider(SAMPLES / "prices"), tmp_path / "cache")
    with pytest.raises(CharlieError, match="refusing the file"):
        cache.path("../../ZZLEAK")
    with pytest.raises(CharlieError, match="invalid ticker"):
        fetch_prices({"../OUTSIDEPRICES": (D(2024, 1, 2), D(2024, 1, 31))}, [FileProvider(inner)])
    with pytest.raises(NotAvailable):  # a valid ticker without a file is still just absent
        FileProvider(inner).fetch("ZZZ", D(2024, 1, 2), D(2024, 1, 31))


# ------------------------------------------------------------- parse: nothing lost


def test_theses_inside_a_wrapper_element_are_parsed(tmp_path):
    text = document([{}], ticker="ACME").replace(
        "</stock-theses>",
        "<group>\n" + thesis_xml({"date": "2024-01-09"}) + "<sub>\n"
        + thesis_xml({"date": "2024-01-10"}) + "</sub></group>\n" + thesis_xml({"date": "2024-01-11"})
        + "</stock-theses>",
    )  # fmt: skip
    path = write(tmp_path / "acme.xml", text)
    other = write(tmp_path / "bolt.xml", document([{}], ticker="BOLT"))
    result = parse_files([path, other])
    dates = sorted(r["as_of_date"] for r in result.records if r["ticker"] == "ACME")
    assert dates == ["2024-01-08", "2024-01-09", "2024-01-10", "2024-01-11"]
    assert any(r["ticker"] == "BOLT" for r in result.records)
    assert identity_holds(result.report("d")) and not result.rejects


def test_a_thesis_nested_in_a_thesis_is_rejected_and_the_outer_one_kept(tmp_path):
    nested = THESIS.replace("  </thesis>", thesis_xml({"date": "2024-02-01"}) + "  </thesis>", 1)
    text = document([], ticker="ACME").replace("</stock-theses>", nested + "</stock-theses>")
    result = parse_files([write(tmp_path / "acme.xml", text)])
    assert [r["as_of_date"] for r in result.records] == ["2024-01-08"]
    assert [r["reason"] for r in result.rejects] == ["nested_thesis"]
    report = result.report("d")
    assert report["totals"]["theses_seen"] == 2 and identity_holds(report)


def test_a_namespaced_thesis_is_reported_not_ignored(tmp_path):
    ns = THESIS.replace("<thesis>", "<p:thesis>").replace("</thesis>", "</p:thesis>")
    text = (
        document([{}], ticker="ACME")
        .replace('<stock-theses ticker="ACME"', '<stock-theses xmlns:p="urn:x" ticker="ACME"')
        .replace("</stock-theses>", ns + "</stock-theses>")
    )
    result = parse_files([write(tmp_path / "acme.xml", text)])
    assert len(result.records) == 1 and [r["reason"] for r in result.rejects] == [
        "namespaced_thesis"
    ]
    assert identity_holds(result.report("d"))


# ------------------------------------------------------------- outputs never collide


def parse_argv(tmp_path: Path, out: Path, rejects: Path, report: Path) -> list[str]:
    xml = tmp_path / "xml"
    xml.mkdir(exist_ok=True)
    write(xml / "acme.xml", document([{}], ticker="ACME"))
    return ["parse", "--input-dir", str(xml), "--out", str(out), "--rejects", str(rejects),
            "--report", str(report)]  # fmt: skip


@pytest.mark.parametrize("same", ["rejects", "report"])
def test_parse_refuses_two_outputs_on_one_path(tmp_path, capsys, same):
    out = tmp_path / "records.jsonl"
    other = {"rejects": tmp_path / "r.jsonl", "report": tmp_path / "p.json"}
    other[same] = out
    assert main(parse_argv(tmp_path, out, other["rejects"], other["report"])) == 2
    err = capsys.readouterr().err
    assert "are the same path" in err and "Traceback" not in err
    assert not out.exists()


def test_parse_refuses_to_write_over_an_input(tmp_path, capsys):
    argv = parse_argv(tmp_path, tmp_path / "xml" / "acme.xml", tmp_path / "r.jsonl",
                      tmp_path / "p.json")  # fmt: skip
    before = (tmp_path / "xml" / "acme.xml").read_bytes()
    assert main(argv) == 2
    assert "would overwrite the input acme.xml" in capsys.readouterr().err
    assert (tmp_path / "xml" / "acme.xml").read_bytes() == before


def test_an_output_is_never_written_over_a_device_or_a_fifo(tmp_path, capsys):
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    argv = parse_argv(tmp_path, fifo, tmp_path / "r.jsonl", tmp_path / "p.json")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "refusing to replace" in err and "named pipe, not a regular file" in err
    assert fifo.is_fifo()
    from charlie.io import atomic_outputs

    with (
        pytest.raises(CharlieError, match="character device, not a regular file"),
        atomic_outputs("/dev/null"),
    ):
        pass
    assert Path("/dev/null").is_char_device()


def test_a_directory_output_replaces_only_what_charlie_wrote(tmp_path):
    from charlie.io import MARKER, atomic_directory

    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with (
        pytest.raises(CharlieError, match="a directory Charlie did not write"),
        atomic_directory(user),
    ):
        pass
    assert (user / "notes.txt").read_text() == "keep me"
    ours = tmp_path / "ours"
    for content in ("one", "two"):  # written, then replaced whole
        with atomic_directory(ours) as tmp:
            (tmp / "data.txt").write_text(content)
    assert (ours / "data.txt").read_text() == "two" and (ours / MARKER).is_file()
    with pytest.raises(CharlieError, match="not a directory"), atomic_directory(user / "notes.txt"):
        pass


def test_dataset_refuses_an_output_that_holds_its_records(tmp_path, capsys):
    parsed = tmp_path / "parsed"
    parsed.mkdir()
    (parsed / "records.jsonl").write_text('{"uid": "x"}\n')
    (parsed / "unrelated.txt").write_text("keep me")
    argv = ["dataset", "--records", str(parsed / "records.jsonl"), "--out", str(parsed),
            "--card", str(tmp_path / "card.json")]  # fmt: skip
    assert main(argv) == 2
    assert "would overwrite the input --records" in capsys.readouterr().err
    assert sorted(p.name for p in parsed.iterdir()) == ["records.jsonl", "unrelated.txt"]


# ------------------------------------------------------------------ the price API


@pytest.fixture
def eodhd_pair():
    from .eodhd_server import FakeEodhd, make_bars

    bars = make_bars([f"2024-01-{d:02d}" for d in (2, 3, 4, 5, 8)])
    with FakeEodhd({"ACME.US": bars}) as api, FakeEodhd({"ACME.US": bars}) as elsewhere:
        yield api, elsewhere


def eodhd(server, **kw):
    from charlie.prices.eodhd import EodhdProvider

    return EodhdProvider("SECRET-KEY-123", base_url=server.url, backoff_s=0.0,
                         sleep=lambda s: None, **kw)  # fmt: skip


def test_a_redirect_to_another_host_never_gets_the_key(eodhd_pair):
    api, elsewhere = eodhd_pair
    api.script("ACME.US", (302, {"Location": f"{elsewhere.url}/api/eod/ACME.US"}))
    with pytest.raises(NotAvailable, match="redirected to another host"):
        eodhd(api).fetch("ACME", D(2024, 1, 2), D(2024, 1, 8))
    assert elsewhere.requests == []  # nothing reached the other host, key or not


def test_a_redirect_on_the_same_host_is_followed_with_the_key(eodhd_pair):
    api, _ = eodhd_pair
    api.script("ACME.US", (301, {"Location": "/api/eod/ACME.US"}))
    frame = eodhd(api).fetch("ACME", D(2024, 1, 2), D(2024, 1, 8))
    assert len(frame) == 5 and len(api.requests_for("ACME.US")) == 2


def test_a_truncated_answer_is_retried(eodhd_pair):
    api, _ = eodhd_pair
    api.script("ACME.US", ("truncate", 20))
    frame = eodhd(api).fetch("ACME", D(2024, 1, 2), D(2024, 1, 8))
    assert len(frame) == 5 and len(api.requests_for("ACME.US")) == 2


def test_the_timeout_bounds_the_whole_request_not_each_read(eodhd_pair):
    import time

    from charlie.prices.base import TransientError

    api, _ = eodhd_pair
    api.script("ACME.US", ("drip", 0.05))  # ~400 bytes at 20 bytes/s: 20 s to send
    start = time.monotonic()
    with pytest.raises(TransientError, match="timed out"):
        eodhd(api, timeout_s=0.5, max_retries=0).fetch("ACME", D(2024, 1, 2), D(2024, 1, 8))
    assert time.monotonic() - start < 5


# -------------------------------------------------------------- secrets stay secret


def test_a_server_error_echoing_the_bearer_token_is_redacted(tmp_path, monkeypatch, capsys):
    from .kfp_server import FakeKfp

    package = tmp_path / "pipeline.yaml"
    package.write_text("pipelineInfo:\n  name: charlie-sft\n")
    monkeypatch.setenv("KFP_TOKEN", "tok-9f8e7d6c5b4a")
    monkeypatch.setenv("CHARLIE_LOG_DIR", str(tmp_path / "logs"))
    with FakeKfp() as server:
        server.fail_with = (500, "upstream failed; request had Authorization: {authorization}")
        code = main(["submit", "--host", server.url, "--package", str(package)])
    assert code != 0
    err = capsys.readouterr().err
    assert "HTTP 500" in err and "Bearer ***" in err and "tok-9f8e7d6c5b4a" not in err
    logged = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert "tok-9f8e7d6c5b4a" not in logged


def test_redact_catches_credentials_whatever_their_source():
    from charlie.logs import redact

    text = redact('GET /x?api_token=abc123&fmt=json "authorization": "Bearer eyJ.x-y_z" token=q1')
    assert "abc123" not in text and "eyJ" not in text and "q1" not in text
    assert "fmt=json" in text and text.count("***") == 3
    assert redact("the bearer of bad news") == "the bearer of bad news"  # prose stays


# ---------------------------------------------------------------- one sentence, not a traceback


@pytest.mark.parametrize(
    ("variable", "value", "sentence"),
    [
        ("CHARLIE_LOG_LEVEL", "garbage", "CHARLIE_LOG_LEVEL='garbage' is not a log level"),
        ("CHARLIE_FOO__BAR", "1", "environment variable CHARLIE_FOO__BAR: unknown key 'foo'"),
    ],
)
def test_a_bad_environment_variable_is_one_sentence_naming_it(monkeypatch, capsys, tmp_path,
                                                               variable, value, sentence):  # fmt: skip
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("CHARLIE_LOG_DIR", str(tmp_path / "logs"))
    argv = parse_argv(tmp_path, tmp_path / "o.jsonl", tmp_path / "r.jsonl", tmp_path / "p.json")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert sentence in err and "Traceback" not in err


# ------------------------------------------------------------------ pods run restricted


def test_every_pipeline_step_runs_as_the_images_non_root_user():
    """The compiled pipeline: every executor's securityContext (the KFP compiler adds the
    restricted profile's other fields itself); the TrainJob pods: test_trainjob.py."""
    import yaml

    from .conftest import REPO

    spec = yaml.safe_load(
        (REPO / "pipelines" / "sft_pipeline.yaml").read_text().split("\n---\n")[1]
    )
    executors = spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(executors) >= 9
    for name, config in executors.items():
        assert config["securityContext"] == {"runAsNonRoot": True, "runAsUser": "10001",
                                             "runAsGroup": "10001"}, name  # fmt: skip


@pytest.mark.parametrize("content", [b"EODHD_API_KEY=\xff\xfe\x00bad\n", "A=1\n".encode("utf-16")])
def test_a_dotenv_that_is_not_utf8_is_one_sentence(tmp_path, monkeypatch, capsys, content):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_bytes(content)
    monkeypatch.setenv("CHARLIE_LOG_DIR", str(tmp_path / "logs"))
    argv = parse_argv(tmp_path, tmp_path / "o.jsonl", tmp_path / "r.jsonl", tmp_path / "p.json")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert ".env is not UTF-8 text" in err and "Traceback" not in err


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    import time

    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    params = tmp_path / "params.yaml"
    params.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    assert main(["prices", "--params", str(params), "--tickers", "ACME", "--start", "2024-01-02",
                 "--end", "2024-01-05"]) == 2  # fmt: skip
    assert time.monotonic() - start < 10
    assert "YAML aliases (*name) are not allowed (alias at line 2)" in capsys.readouterr().err


@pytest.mark.parametrize("windows", ["[100000000]", "[-1, 0]", "[]"])
def test_forward_windows_outside_a_year_of_trading_days_are_refused(tmp_path, windows):
    from charlie.config import ConfigError, load_config
    from charlie.evaluation.config import EvalConfig

    path = tmp_path / "eval.yaml"
    path.write_text(f"forward_windows: {windows}\n")
    with pytest.raises(ConfigError, match="forward_windows"):
        load_config(path, EvalConfig)


def test_evaluate_limit_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--limit", "-3"])
    assert exit_.value.code == 2
    assert "--limit: expected a positive number, got -3" in capsys.readouterr().err


def test_parse_reports_links_out_of_the_input_and_entries_that_are_not_files(tmp_path, capsys):
    import json
    import os

    secret = tmp_path / "elsewhere" / "secret.xml"
    secret.parent.mkdir()
    write(secret, document([{}], ticker="SECRET"))
    xml = tmp_path / "xml"
    xml.mkdir()
    write(xml / "acme.xml", document([{}], ticker="ACME"))
    (xml / "leak.xml").symlink_to(secret)
    (xml / "also.xml").symlink_to(xml / "acme.xml")  # a link inside the input: read
    os.mkfifo(xml / "pipe.xml")
    (xml / "folder.xml").mkdir()
    (xml / "dangling.xml").symlink_to(tmp_path / "missing.xml")
    out = tmp_path / "out"
    argv = ["parse", "--input-dir", str(xml), "--out", str(out / "records.jsonl"),
            "--rejects", str(out / "rejects.jsonl"), "--report", str(out / "report.json")]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    faults = {f["file"]: f.get("fault", {}).get("reason") for f in report["files"]}
    assert faults == {"acme.xml": None, "also.xml": None, "dangling.xml": "not_regular_file",
                      "folder.xml": "not_regular_file", "leak.xml": "outside_input",
                      "pipe.xml": "not_regular_file"}  # fmt: skip
    records = (out / "records.jsonl").read_text()
    assert "SECRET" not in records and '"ACME"' in records


# ------------------------------------------------------------- prices are validated


def bars(rows: list[tuple]) -> pd.DataFrame:
    columns = ["date", "open", "high", "low", "close", "adj_close", "volume"]
    return pd.DataFrame(rows, columns=columns)


GOOD = ("2024-01-02", 10.0, 11.0, 9.5, 10.5, 10.5, 1000.0)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (("2024-13-45", 10, 11, 9.5, 10.5, 10.5, 1000), "bad_date"),
        (("2024-01-03", 10, 11, 9.5, None, 10.5, 1000), "missing_close"),
        (("2024-01-03", 10, 11, 9.5, "ten", 10.5, 1000), "not_numeric"),
        (("2024-01-03", None, 11, 9.5, 10.5, 10.5, 1000), "missing_value"),
        (("2024-01-03", 10, 11, 9.5, 10.5, 10.5, None), "missing_value"),
        (("2024-01-03", 10, 11, 9.5, float("inf"), 10.5, 1000), "not_finite"),
        (("2024-01-03", 10, 11, 9.5, 10.5, 0.0, 1000), "non_positive_price"),
        (("2024-01-03", -1, 11, -2, 10.5, 10.5, 1000), "non_positive_price"),
        (("2024-01-03", 10, 11, 9.5, 10.5, 10.5, 1e300), "implausible_volume"),
        (("2024-01-03", 10, 9, 9.5, 10.5, 10.5, 1000), "inconsistent_range"),
        (("2024-01-02", 10, 11, 9.5, 10.7, 10.7, 1000), "conflicting_duplicate"),
    ],
)
def test_a_bad_bar_is_dropped_and_counted_with_its_reason(bad, reason):
    from charlie.prices.base import normalize_frame

    later = [(f"2024-01-{d:02d}", 10.0, 11.0, 9.5, 10.5, 10.5, 1000.0) for d in (4, 5, 8)]
    frame = normalize_frame(bars([GOOD, bad, *later]).astype(object))
    dropped = frame.attrs["dropped"]
    expected = 2 if reason == "conflicting_duplicate" else 1  # both rows of the date go
    assert dropped == {reason: expected}
    assert len(frame) == 5 - expected and frame["date"].is_monotonic_increasing
    assert frame[["open", "high", "low", "close", "adj_close", "volume"]].gt(0).all().all()


def test_identical_repeats_collapse_and_are_counted():
    from charlie.prices.base import normalize_frame

    frame = normalize_frame(bars([GOOD, GOOD]))
    assert len(frame) == 1 and frame.attrs["dropped"] == {"duplicate_date": 1}


def test_a_ticker_whose_data_is_mostly_bad_fails_in_one_sentence(tmp_path):
    from charlie.prices.service import require_all

    prices = tmp_path / "prices"
    prices.mkdir()
    rows = [(f"2024-01-{d:02d}", 10, 11, 9.5, "ten", 10.5, 1000) for d in range(2, 12)]
    bars([GOOD, *rows]).to_csv(prices / "ACME.csv", index=False)
    providers = [FileProvider(prices)]
    result = fetch_prices({"ACME": (D(2024, 1, 1), D(2024, 1, 31))}, providers)
    assert result.missing == ["ACME"]
    (row,) = result.rows
    assert row["status"] == "invalid" and "10 dropped (10 not_numeric) of 11 bars" in row["detail"]
    with pytest.raises(CharlieError, match="no price data for ACME"):
        require_all(result, providers)


def test_prices_that_start_after_the_theses_fail_the_dataset_with_the_numbers():
    from charlie.dataset import check_history

    dates = {f"ACME-2024-01-{d:02d}": None for d in range(2, 8)} | {
        "ACME-2024-03-01": D(2024, 3, 1)
    }
    with pytest.raises(CharlieError, match=r"6 of 7 prompts \(85.7%\) have no price bar"):
        check_history(dates, 0.02)
    check_history(dates, 0.9)  # a threshold the user chose


# ------------------------------------------------------------------------ the backtest


def test_a_prediction_dated_decades_away_is_dropped_not_stretching_the_run():
    from charlie.backtest.panel import drop_isolated

    dates = pd.to_datetime(["1990-01-02"] + [f"2025-01-{d:02d}" for d in range(2, 12)])
    predictions = pd.DataFrame({"ticker": "ACME", "as_of_date": dates, "pred_action": "BUY"})
    kept, strays = drop_isolated(predictions)
    assert len(kept) == 10 and kept["as_of_date"].min() == pd.Timestamp("2025-01-02")
    assert list(strays["as_of_date"]) == [pd.Timestamp("1990-01-02")]
    same, none = drop_isolated(kept)
    assert len(same) == 10 and none.empty


def test_a_prediction_before_its_tickers_first_bar_is_dropped_and_counted():
    from charlie.backtest.config import BacktestConfig
    from charlie.backtest.panel import build_panel

    frame = FileProvider(SAMPLES / "prices").fetch("ACME", D(2024, 1, 2), D(2024, 3, 29))
    dates = pd.to_datetime(["2023-12-01", "2024-02-01", "2024-02-02"])
    predictions = pd.DataFrame({"ticker": "ACME", "as_of_date": dates, "pred_action": "BUY"})
    panel = build_panel(predictions, {"ACME": frame}, BacktestConfig())
    assert panel.before_prices == 1 and panel.dates[0] == pd.Timestamp("2024-02-01")


def test_a_wiped_out_book_reports_no_sharpe_or_sortino():
    import math

    from charlie.backtest import metrics

    returns = [0.5, 0.4, 0.6, -1.0, 0.0, 0.0]
    assert metrics.wiped_out(returns) and metrics.total_return(returns) == -1.0
    assert math.isnan(metrics.sharpe_ratio(returns)) and math.isnan(metrics.sortino_ratio(returns))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"action_units": {"BUY": 1e300}}, "units must be a number from -100 to 100"),
        ({"initial_cash": float("inf")}, "initial_cash"),
        ({"risk_free_per_period": 0.01}, "risk_free_per_period"),
        ({"position_sizing": "fixed_pct", "fixed_pct_value": 0.6, "allow_shorts": True},
         "the largest position is 1.2x equity"),
    ],
)  # fmt: skip
def test_absurd_backtest_settings_are_one_sentence(tmp_path, config, message):
    import yaml

    from charlie.backtest.config import BacktestConfig
    from charlie.config import ConfigError, load_config

    path = tmp_path / "backtest.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=message):
        load_config(path, BacktestConfig)


# ------------------------------------------------- parse: what follows a fault is counted


def _thesis(date: str, reasoning: str = "Detailed.") -> str:
    return thesis_xml({"date": date, "reasoning": reasoning})


HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n<stock-theses ticker="ACME">\n'


@pytest.mark.parametrize(
    ("reasoning", "reason"),
    [
        ("x" * 10_500_000, "text_too_long"),
        ("bad\x00x", "invalid_character"),
        ("bad\x1bx", "invalid_character"),
        ("bad&#x1b;x", "invalid_character"),
        ("<b>" * 5000 + "x" + "</b>" * 5000, "too_deep"),
    ],
    ids=["10MB-text", "NUL", "ESC", "ESC-ref", "depth-5000"],
)
def test_the_thesis_after_a_fault_is_counted_and_the_fault_named(tmp_path, reasoning, reason):
    text = HEAD + _thesis("2024-01-02") + _thesis("2024-01-03", reasoning)
    text += _thesis("2024-01-04") + _thesis("2024-01-05") + "</stock-theses>\n"
    result = parse_files([write(tmp_path / "acme.xml", text)])
    report = result.report("d")
    assert report["balanced"] and report["totals"]["theses_seen"] == 4
    assert [r["as_of_date"] for r in result.records] == ["2024-01-02"]
    assert [r["reason"] for r in result.rejects] == [
        "incomplete_thesis", reason, "unread_after_fault", "unread_after_fault"]  # fmt: skip
    unread = [r for r in result.rejects if r["reason"] == "unread_after_fault"]
    assert "byte offset" in unread[0]["excerpt"] and unread[0]["source_line"] > 10


def test_mixed_encodings_count_what_follows_the_bad_bytes(tmp_path):
    path = tmp_path / "acme.xml"
    path.write_bytes((HEAD + _thesis("2024-01-02", "café")).encode()
                     + _thesis("2024-01-03", "café").encode("latin-1")
                     + (_thesis("2024-01-04") + "</stock-theses>\n").encode())  # fmt: skip
    result = parse_files([path])
    assert result.report("d")["balanced"] and len(result.records) == 1
    assert [r["reason"] for r in result.rejects] == [
        "incomplete_thesis", "encoding_error", "unread_after_fault"]  # fmt: skip


def test_the_raw_scan_finds_every_start_tag_across_chunk_boundaries(tmp_path, monkeypatch):
    import re

    from charlie import parsing

    text = HEAD + "".join(_thesis(f"2024-01-{d:02d}") for d in range(2, 30)) + "<p:thesis/>"
    path = write(tmp_path / "acme.xml", text)
    data = path.read_bytes()
    expected = [(data.count(b"\n", 0, m.start()) + 1, m.start())
                for m in re.finditer(rb"<(?:\w+:)?thesis[\s>/]", data)]  # fmt: skip
    for chunk in (7, 64, 65, 1000, 1 << 20):
        monkeypatch.setattr(parsing, "_SCAN_CHUNK", chunk)
        assert list(parsing.thesis_starts(path)) == expected, chunk
    utf16 = tmp_path / "utf16.xml"
    utf16.write_bytes(text.replace("UTF-8", "UTF-16").encode("utf-16"))
    assert len(list(parsing.thesis_starts(utf16))) == 29


# ------------------------------------------------------- multi-file outputs, one unit


def test_a_run_killed_between_renames_is_finished_by_the_next(tmp_path, monkeypatch):
    import os

    from charlie import io

    a, b = tmp_path / "records.jsonl", tmp_path / "report.json"
    a.write_text("old records")
    b.write_text("old report")
    real_replace, calls = os.replace, []

    def die_after_the_first(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies here
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", die_after_the_first)
    with pytest.raises(KeyboardInterrupt), io.atomic_outputs(a, b) as (ta, tb):
        ta.write_text("new records")
        tb.write_text("new report")
    monkeypatch.setattr(io.os, "replace", real_replace)
    # what a killed process leaves: a new records file beside the old report, and a journal
    assert a.read_text() == "new records" and b.read_text() == "old report"
    journal = tmp_path / ".records.jsonl.commit.json"
    assert journal.is_file()
    pending = [Path(t) for t, _ in __import__("json").loads(journal.read_text())]
    pending[1].write_text("new report")  # kill -9 runs no `finally`: its temporary stays
    with io.atomic_outputs(a, b) as (ta, tb):  # the next run finishes the unit first
        assert b.read_text() == "new report" and not journal.exists()
        ta.write_text("third")
        tb.write_text("third")


def test_temporaries_of_killed_runs_are_removed(tmp_path):
    import os
    import time

    from charlie.io import atomic_outputs

    out = tmp_path / "records.jsonl"
    stale = tmp_path / ".records.jsonl.abc123.tmp"
    stale.write_text("half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    unrelated = tmp_path / ".other.jsonl.abc.tmp"
    unrelated.write_text("not ours")
    os.utime(unrelated, (old, old))
    with atomic_outputs(out) as (tmp,):
        tmp.write_text("new")
    assert not stale.exists() and unrelated.exists() and out.read_text() == "new"
