"""Files, the parquet cache and the provider chain, against the fake eodhd server on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from collections import Counter

import pandas as pd
import pytest

from charlie.cli import main
from charlie.errors import CharlieError
from charlie.prices.base import AuthError, NotAvailable, TransientError, normalize_frame
from charlie.prices.cache import CachedProvider, merge_ranges, missing_ranges
from charlie.prices.eodhd import EodhdProvider
from charlie.prices.files import FileProvider
from charlie.prices.service import fetch_prices, require_all
from charlie.prices.validate import describe

from .conftest import SAMPLES
from .eodhd_server import FakeEodhd, make_bars

KEY = "SECRET-KEY-987"
D = dt.date
JAN = [f"2024-01-{d:02d}" for d in (2, 3, 4, 5, 8, 9, 10, 11, 12, 16, 17, 18, 19)]


@pytest.fixture
def server():
    with FakeEodhd({"ACME.US": make_bars(JAN), "BOLT.US": make_bars(JAN, start_price=50)}) as srv:
        yield srv


def eodhd(server, **kw) -> EodhdProvider:
    return EodhdProvider(KEY, base_url=server.url, backoff_s=0.0, sleep=lambda s: None, **kw)


# ------------------------------------------------------------------------- ranges


def test_missing_ranges_subtract_what_is_covered():
    assert missing_ranges([], D(2024, 1, 1), D(2024, 1, 31)) == [(D(2024, 1, 1), D(2024, 1, 31))]
    covered = [(D(2024, 1, 5), D(2024, 1, 10)), (D(2024, 1, 20), D(2024, 2, 5))]
    assert missing_ranges(covered, D(2024, 1, 1), D(2024, 1, 31)) == [
        (D(2024, 1, 1), D(2024, 1, 4)),
        (D(2024, 1, 11), D(2024, 1, 19)),
    ]
    assert missing_ranges(covered, D(2024, 1, 6), D(2024, 1, 9)) == []
    assert merge_ranges([(D(2024, 1, 1), D(2024, 1, 3)), (D(2024, 1, 4), D(2024, 1, 6))]) == [
        (D(2024, 1, 1), D(2024, 1, 6))
    ]


# -------------------------------------------------------------------------- files


def test_file_provider_reads_csv_and_parquet(tmp_path):
    csv = FileProvider(SAMPLES / "prices").fetch("ACME", D(2024, 1, 2), D(2024, 1, 31))
    assert list(csv.columns) == ["date", "open", "high", "low", "close", "adj_close", "volume"]
    assert csv["date"].min() == pd.Timestamp("2024-01-02") and len(csv) == 21
    csv.to_parquet(tmp_path / "ACME.parquet")
    parquet = FileProvider(tmp_path).fetch("ACME", D(2024, 1, 2), D(2024, 1, 31))
    pd.testing.assert_frame_equal(csv, parquet)
    with pytest.raises(NotAvailable, match=r"no ZZZ\.csv or ZZZ\.parquet"):
        FileProvider(tmp_path).fetch("ZZZ", D(2024, 1, 2), D(2024, 1, 31))
    (tmp_path / "BAD.csv").write_text("date,close\n2024-01-02,1\n")
    with pytest.raises(NotAvailable, match="lacks the column"):
        FileProvider(tmp_path).fetch("BAD", D(2024, 1, 2), D(2024, 1, 31))


def test_a_yahoo_finance_download_reads_as_it_is_and_bad_files_say_what_they_hold(tmp_path):
    bars = "2024-01-02,10,11,9.5,10.5,10.4,1000\n2024-01-03,10,11,9.5,10.6,10.5,1200\n"
    (tmp_path / "ACME.csv").write_text("Date,Open,High,Low,Close,Adj Close,Volume\n" + bars)
    (tmp_path / "BOLT.csv").write_text(" date ,OPEN,high,low,close,adjusted_close,Volume\n" + bars)
    window = (D(2024, 1, 1), D(2024, 1, 31))
    yahoo, eodhd = (FileProvider(tmp_path).fetch(t, *window) for t in ("ACME", "BOLT"))
    assert list(yahoo.columns) == ["date", "open", "high", "low", "close", "adj_close", "volume"]
    assert yahoo["adj_close"].tolist() == [10.4, 10.5] and yahoo["date"].dtype.kind == "M"
    pd.testing.assert_frame_equal(yahoo, eodhd)
    (tmp_path / "SEMI.csv").write_text("date;open;high;low;close;volume\n2024-01-02;1;1;1;1;1\n")
    with pytest.raises(NotAvailable, match=r"lacks the column\(s\) date, open, high, low, close, "
                       r"volume \(its columns: date;open;high;low;close;volume; a CSV is "
                       r"comma-separated, with a header row\)$"):  # fmt: skip
        FileProvider(tmp_path).fetch("SEMI", *window)
    (tmp_path / "TWICE.csv").write_text("date,close,Close,open,high,low,volume\n")
    with pytest.raises(NotAvailable, match=r"cannot be read: more than one column is named close$"):
        FileProvider(tmp_path).fetch("TWICE", *window)
    (tmp_path / "COMMA.csv").write_text(
        'date,open,high,low,close,volume\n2024-01-02,"1,010",1011,1009,1010,"1,000"\n'
    )
    with pytest.raises(NotAvailable, match=r"has no bar between 2024-01-01 and 2024-01-31 that "
                       r"passes validation: 1 dropped \(1 not_numeric\)$"):  # fmt: skip
        FileProvider(tmp_path).fetch("COMMA", *window)


def test_the_file_provider_keeps_the_sha256_of_the_bytes_it_read(tmp_path):
    """The dataset's input hash is made of it: the file's bytes, not the bars served."""
    path = tmp_path / "ACME.csv"
    path.write_bytes((SAMPLES / "prices" / "ACME.csv").read_bytes())
    window = (D(2024, 1, 2), D(2024, 1, 31))
    first = FileProvider(tmp_path).fetch("ACME", *window)
    assert first.attrs["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    os.utime(path, (1, 1))  # touched, or rewritten with the same bytes: the same hash
    path.write_bytes(path.read_bytes())
    assert FileProvider(tmp_path).fetch("ACME", *window).attrs == first.attrs
    lines = path.read_text().splitlines()
    lines[-1] = lines[-1][:-1] + ("1" if lines[-1][-1] != "1" else "2")  # a bar outside the window
    path.write_text("\n".join(lines) + "\n")
    edited = FileProvider(tmp_path).fetch("ACME", *window)
    pd.testing.assert_frame_equal(edited, first)  # the same bars ...
    assert edited.attrs["file_sha256"] != first.attrs["file_sha256"]  # ... from other bytes


def test_a_csv_whose_dates_do_not_all_parse_is_still_validated_row_by_row(tmp_path):
    (tmp_path / "ACME.csv").write_text(
        "date,open,high,low,close,adj_close,volume\n"
        "2024-01-02,10,11,9.5,10.5,10.5,1000\n"
        "not a date,10,11,9.5,10.5,10.5,1000\n"
        "2024-01-03,10,11,9.5,10.5,,1000\n"  # no adjusted close: the close stands in
        "9999-12-31,10,11,9.5,10.5,10.5,1000\n"  # beyond datetime64[ns]: not a date either
        "2023-06-01,10,11,9.5,10.5,10.5,1000\n"  # outside the window: not counted
    )
    frame = FileProvider(tmp_path).fetch("ACME", D(2024, 1, 1), D(2024, 1, 31))
    assert frame["date"].dt.strftime("%Y-%m-%d").tolist() == ["2024-01-02", "2024-01-03"]
    assert frame["adj_close"].tolist() == [10.5, 10.5]
    assert frame.attrs["dropped"] == {"bad_date": 2}
    (tmp_path / "NODATE.csv").write_text("day,open,high,low,close,volume\n2024-01-02,1,1,1,1,1\n")
    with pytest.raises(NotAvailable, match=r"lacks the column\(s\) date \(its columns: day, "
                       r"open, high, low, close, volume; a CSV is comma-separated"):  # fmt: skip
        FileProvider(tmp_path).fetch("NODATE", D(2024, 1, 1), D(2024, 1, 31))


def test_dates_stamped_in_exchange_time_keep_their_own_day_across_a_dst_switch(tmp_path):
    """Offsets that change (pandas 3 refuses to parse them together) and formats that differ
    from the first row's (pandas applies the first's to all) still give each row its day."""
    (tmp_path / "ACME.csv").write_text(
        "date,open,high,low,close,adj_close,volume\n"
        "2024-03-08T16:00:00-05:00,10,11,9.5,10.5,10.5,1000\n"  # EST
        "2024-03-11T16:00:00-04:00,10,11,9.5,10.6,10.6,1000\n"  # EDT: the 11th, not the 12th
        "2024-03-12T23:30:00-04:00,10,11,9.5,10.7,10.7,1000\n"  # the 13th in UTC: still the 12th
        "2024-03-13,10,11,9.5,10.8,10.8,1000\n"  # no time, no offset
        "garbled,10,11,9.5,10.9,10.9,1000\n"
    )
    frame = FileProvider(tmp_path).fetch("ACME", D(2024, 3, 1), D(2024, 3, 31))
    assert frame["date"].dt.strftime("%Y-%m-%d").tolist() == [
        "2024-03-08", "2024-03-11", "2024-03-12", "2024-03-13"]  # fmt: skip
    assert frame["close"].tolist() == [10.5, 10.6, 10.7, 10.8]
    assert frame.attrs["dropped"] == {"bad_date": 1}


def test_a_blank_adjusted_close_means_the_close_never_a_missing_number():
    columns = ["date", "open", "high", "low", "close", "adj_close", "volume"]
    rows = [("2024-01-02", 10.0, 11.0, 9.5, 10.5, " ", 1000.0),
            ("2024-01-03", 10.0, 11.0, 9.5, 10.4, 10.3, 1000.0)]  # fmt: skip
    for raw in (
        pd.DataFrame(rows, columns=columns),
        pd.DataFrame(rows, columns=columns).astype(object),
    ):
        frame = normalize_frame(raw)
        assert frame["adj_close"].tolist() == [10.5, 10.3] and not frame.attrs["dropped"]


def test_reasons_are_counted_in_the_order_rows_first_show_them():
    """describe() breaks ties by first appearance, as counting row by row did."""
    good = ("2024-01-05", 10.0, 11.0, 9.5, 10.5, 10.5, 1000.0)
    bad = [("2024-01-02", 10.0, 11.0, 9.5, float("inf"), 10.5, 1000.0),  # not_finite
           ("2024-01-03", 0.0, 11.0, 9.5, 10.5, 10.5, 1000.0),  # non_positive_price
           ("2024-13-45", 10.0, 11.0, 9.5, 10.5, 10.5, 1000.0)]  # bad_date  # fmt: skip
    columns = ["date", "open", "high", "low", "close", "adj_close", "volume"]
    frame = normalize_frame(pd.DataFrame([*bad, good, good], columns=columns))
    assert list(frame.attrs["dropped"].items()) == [
        ("not_finite", 1), ("non_positive_price", 1), ("bad_date", 1), ("duplicate_date", 1)
    ]  # fmt: skip
    assert describe(Counter(frame.attrs["dropped"])) == (
        "4 dropped (1 not_finite, 1 non_positive_price, 1 bad_date, 1 duplicate_date)"
    )
    assert len(frame) == 1 and frame.index.tolist() == [0]


# -------------------------------------------------------------------------- cache


def test_cache_fetches_only_what_it_lacks_and_a_hit_needs_no_network_or_key(server, tmp_path):
    cached = CachedProvider(eodhd(server), tmp_path, today=D(2025, 1, 1))
    first = cached.fetch("ACME", D(2024, 1, 2), D(2024, 1, 10))
    assert len(first) == 7 and len(server.requests) == 1
    assert (server.requests[0].query["from"], server.requests[0].query["to"]) == (
        "2024-01-02",
        "2024-01-10",
    )

    wider = cached.fetch("ACME", D(2024, 1, 2), D(2024, 1, 19))
    assert len(wider) == 13 and len(server.requests) == 2
    assert (server.requests[1].query["from"], server.requests[1].query["to"]) == (
        "2024-01-11",
        "2024-01-19",
    )
    assert (cached.last.cached_rows, cached.last.fetched_rows) == (7, 6)

    keyless = CachedProvider(
        EodhdProvider(None, base_url=server.url), tmp_path, today=D(2025, 1, 1)
    )
    hit = keyless.fetch("ACME", D(2024, 1, 3), D(2024, 1, 18))
    assert len(server.requests) == 2 and len(hit) == 11 and not keyless.last.fetched_ranges
    pd.testing.assert_frame_equal(
        hit.reset_index(drop=True), wider.iloc[1:12].reset_index(drop=True)
    )


def test_a_providers_new_cache_version_never_reads_the_old_answers(server, tmp_path):
    """yfinance's version-1 cache held split-adjusted closes: version 2 (raw) starts afresh."""
    from charlie.prices.yahoo import YFinanceProvider

    old = CachedProvider(eodhd(server), tmp_path, today=D(2025, 1, 1))
    old.fetch("ACME", D(2024, 1, 2), D(2024, 1, 10))
    assert old.path("ACME") == tmp_path / "eodhd" / "ACME.parquet"  # version 1: no suffix

    class Reanswered(EodhdProvider):
        cache_version = 2

    new = CachedProvider(Reanswered(KEY, base_url=server.url), tmp_path, today=D(2025, 1, 1))
    assert new.path("ACME") == tmp_path / "eodhd-v2" / "ACME.parquet"
    new.fetch("ACME", D(2024, 1, 2), D(2024, 1, 10))
    assert len(server.requests) == 2  # asked again: the old file is not its answer
    assert YFinanceProvider.cache_version == 2


def test_cache_file_holds_bars_and_coverage_but_never_the_key(server, tmp_path):
    CachedProvider(eodhd(server), tmp_path, today=D(2025, 1, 1)).fetch(
        "ACME", D(2024, 1, 1), D(2024, 1, 7)
    )
    path = tmp_path / "eodhd" / "ACME.parquet"
    frame = pd.read_parquet(path)
    assert list(frame["date"].dt.strftime("%Y-%m-%d")) == JAN[:4]
    assert frame["adj_close"].tolist() == [round(c * 0.9, 4) for c in frame["close"]]
    assert KEY.encode() not in path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["ACME.parquet"]  # no temporaries


def test_a_range_reaching_today_stays_open(server, tmp_path):
    cached = CachedProvider(eodhd(server), tmp_path, today=D(2024, 1, 10))
    cached.fetch("ACME", D(2024, 1, 2), D(2024, 1, 12))
    cached.fetch("ACME", D(2024, 1, 2), D(2024, 1, 12))
    assert [(r.query["from"], r.query["to"]) for r in server.requests] == [
        ("2024-01-02", "2024-01-12"),
        ("2024-01-10", "2024-01-12"),  # today and later were not final, so they are asked again
    ]


def test_a_corrupt_cache_file_is_detected_and_refetched(server, tmp_path, caplog):
    cached = CachedProvider(eodhd(server), tmp_path, today=D(2025, 1, 1))
    cached.fetch("ACME", D(2024, 1, 2), D(2024, 1, 10))
    (tmp_path / "eodhd" / "ACME.parquet").write_bytes(b"PAR1 this is not parquet")
    with caplog.at_level(logging.WARNING, logger="charlie.prices.cache"):
        again = cached.fetch("ACME", D(2024, 1, 2), D(2024, 1, 10))
    assert len(again) == 7 and len(server.requests) == 2 and cached.last.corrupt
    assert "is corrupt" in caplog.text
    assert pd.read_parquet(tmp_path / "eodhd" / "ACME.parquet").shape == (7, 7)


# ------------------------------------------------------------------------ the chain


class Fake:
    def __init__(self, name, outcome):
        self.name, self.outcome, self.calls = name, outcome, 0

    def fetch(self, ticker, start, end):
        self.calls += 1
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def test_fallback_on_quota_and_missing_symbols_then_the_table(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server.script("ACME.US", (402, {}))
    chain = [CachedProvider(eodhd(server), tmp_path), FileProvider(SAMPLES / "prices")]
    wanted = {"ACME": (D(2024, 1, 2), D(2024, 1, 19)), "BOLT": (D(2024, 1, 2), D(2024, 1, 19)),
              "ZZZZ": (D(2024, 1, 2), D(2024, 1, 19))}  # fmt: skip
    result = fetch_prices(wanted, chain)
    assert (
        result.frames["ACME"]["close"].iloc[0]
        == FileProvider(SAMPLES / "prices")
        .fetch("ACME", D(2024, 1, 2), D(2024, 1, 2))["close"]
        .iloc[0]
    )  # came from the file after eodhd's 402
    assert result.frames["BOLT"]["close"].iloc[0] == 50.0  # came from eodhd
    assert result.missing == ["ZZZZ"]
    status = [(r["ticker"], r["provider"], r["status"]) for r in result.rows]
    assert status == [("ACME", "eodhd", "empty"), ("ACME", "file", "ok"), ("BOLT", "eodhd", "ok"),
                      ("ZZZZ", "eodhd", "empty"), ("ZZZZ", "file", "empty")]  # fmt: skip
    table = result.table()
    assert "ACME      eodhd     empty" in table and "BOLT      eodhd     ok" in table
    with pytest.raises(
        CharlieError, match=r"^no price data for ZZZZ from any provider \(eodhd, file\)"
    ):
        require_all(result, chain)
    assert all(KEY not in r.getMessage() for r in caplog.records)
    assert KEY not in table


def test_retries_then_fallback_on_persistent_server_errors(server, tmp_path):
    server.script("ACME.US", (500, {}), (503, {}), (500, {}))
    chain = [
        eodhd(server, max_retries=2),
        Fake(
            "backup", FileProvider(SAMPLES / "prices").fetch("ACME", D(2024, 1, 2), D(2024, 1, 19))
        ),
    ]
    result = fetch_prices({"ACME": (D(2024, 1, 2), D(2024, 1, 19))}, chain)
    assert len(server.requests_for("ACME.US")) == 3 and chain[1].calls == 1
    assert [r["status"] for r in result.rows] == ["failed", "ok"]


def test_a_refused_key_stops_everything_at_once(server, tmp_path):
    server.script("ACME.US", (401, {}))
    backup = Fake("backup", TransientError("never asked"))
    with pytest.raises(CharlieError, match=r"^eodhd: .*401") as err:
        fetch_prices({"ACME": (D(2024, 1, 2), D(2024, 1, 5)), "BOLT": (D(2024, 1, 2), D(2024, 1, 5))},
                     [eodhd(server), backup])  # fmt: skip
    assert backup.calls == 0 and len(server.requests) == 1 and KEY not in str(err.value)
    with pytest.raises(CharlieError, match="EODHD_API_KEY"):
        fetch_prices(
            {"ACME": (D(2024, 1, 2), D(2024, 1, 5))},
            [Fake("eodhd", AuthError("EODHD_API_KEY is not set."))],
        )


def test_prices_cli_with_the_seeds_order_against_the_local_server(
    server, tmp_path, monkeypatch, capsys
):
    server.script("BOLT.US", (404, {}))
    params = tmp_path / "params.yaml"
    params.write_text(
        "prices:\n  providers: [eodhd, file]\n"
        f"  file_dir: {SAMPLES / 'prices'}\n  cache_dir: {tmp_path / 'cache'}\n"
        f"  eodhd:\n    base_url: {server.url}\n    backoff_s: 0.0\n"
    )
    monkeypatch.setenv("EODHD_API_KEY", KEY)
    args = [
        "prices",
        "--params",
        str(params),
        "--tickers",
        "ACME,BOLT",
        "--start",
        "2024-01-02",
        "--end",
        "2024-01-19",
    ]
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "cache" / "eodhd").iterdir()) == ["ACME.parquet"]
    err = capsys.readouterr().err
    assert "ACME      eodhd     ok" in err and "BOLT      file      ok" in err
    assert main(args) == 0  # second run: ACME from the cache, no new request for it
    assert len(server.requests_for("ACME.US")) == 1
    logs = "".join(p.read_text() for p in (tmp_path / "logs").iterdir())
    assert KEY not in logs + capsys.readouterr().err
    args[4] = "ACME,NOPE"
    assert main(args) == 2
    assert "no price data for NOPE from any provider (eodhd, file)" in capsys.readouterr().err
