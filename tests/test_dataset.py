"""The dataset stage: exact chronological splits, embargo, purge, the leakage audit, bad input."""

import datetime as dt
import hashlib
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from datasets import Dataset, load_from_disk

from charlie import dataset as core
from charlie.calendar import shift_trading_days, trading_days
from charlie.cli import main
from charlie.config import load_params
from charlie.errors import CharlieError, ConfigError
from charlie.prompts import PROMPT_HEADER

from .conftest import REPO, SAMPLES, read_jsonl

SPEC = core.SplitSpec(
    train_start=dt.date(2023, 10, 24),
    train_end=dt.date(2024, 12, 31),
    validation_days=30,
    test_start=dt.date(2025, 1, 1),
    test_end=dt.date(2025, 4, 24),
)


def every_day_records(
    tickers=("ACME", "BOLT"), start=dt.date(2023, 10, 24), end=dt.date(2025, 4, 24)
):
    return [
        {"uid": f"{t}-{d}", "ticker": t, "as_of_date": d.isoformat(), "action": "BUY",
         "reasoning": "r", "support": "s", "source_file": f"{t}.xml", "source_line": 1}
        for t in tickers for d in trading_days(start, end)
    ]  # fmt: skip


def frames(tickers=("ACME", "BOLT")):
    import pandas as pd

    return {t: pd.read_csv(SAMPLES / "prices" / f"{t}.csv", parse_dates=["date"]) for t in tickers}


def tables(spec=SPEC, records=None):
    return core.build_tables(records or every_day_records(), frames(), spec, drop_outside=False)


def dates(rows, split):
    return rows[split]["as_of_date"].to_pylist()


def appended(rows, split, row):
    """``rows`` with ``row`` added at the end of ``split``."""
    extra = pa.Table.from_pylist([row], schema=rows[split].schema)
    rows[split] = pa.concat_tables([rows[split], extra])


def test_exact_split_counts_on_known_dates():
    rows, bar_dates, dropped = tables()
    n_train = len(trading_days(dt.date(2023, 10, 24), dt.date(2024, 12, 1)))
    n_val = len(trading_days(dt.date(2024, 12, 2), dt.date(2024, 12, 31)))
    n_test = len(trading_days(dt.date(2025, 1, 1), dt.date(2025, 4, 24)))
    assert (n_train, n_val, n_test) == (278, 21, 77)  # 376 sessions in all
    assert {s: t.num_rows for s, t in rows.items()} == {"train": 556, "validation": 42, "test": 154}
    assert not dropped
    assert dates(rows, "validation")[0] == "2024-12-02"
    assert dates(rows, "test")[-1] == "2025-04-24"
    assert all(bar_dates[r["uid"]].isoformat() == r["as_of_date"]
               for t in rows.values() for r in t.to_pylist())  # fmt: skip
    assert not core.audit(rows, bar_dates, SPEC, 0).problems  # no window: nothing can reach on


def test_embargo_drops_the_trading_days_before_each_later_split():
    spec = core.SplitSpec(**{**SPEC.__dict__, "embargo_days": 5})
    rows, _, dropped = tables(spec)
    # 5 sessions before 2024-12-02 (Thanksgiving closed) and before 2025-01-01 (Christmas closed)
    assert dropped == Counter({"embargo": 20})
    assert max(dates(rows, "train")) == "2024-11-21"
    assert max(dates(rows, "validation")) == "2024-12-23"


def test_rows_hold_the_contract():
    rows, _, _ = core.build_rows(every_day_records(), frames(), SPEC, drop_outside=False)
    row = rows["test"][0]
    assert list(row) == ["prompt", "completion", "uid", "ticker", "as_of_date", "action"]
    assert row["completion"] == "<reasoning>r</reasoning><support>s</support><action><BUY></action>"
    assert row["prompt"].startswith(
        PROMPT_HEADER + "\n\nMarket snapshot for ACME as of the close of 2025-01-02"
    )
    assert [r["as_of_date"] for r in rows["train"]] == sorted(
        r["as_of_date"] for r in rows["train"]
    )
    built, _, _ = tables()
    assert built["test"].schema == pa.schema([(c, pa.string()) for c in core.COLUMNS])
    assert all(t.column(0).num_chunks == 1 for t in built.values())  # as from_list makes it


def test_the_tables_make_the_dataset_from_list_made_byte_for_byte(tmp_path):
    """The stage builds each split straight from Arrow; the saved DatasetDict is unchanged."""
    records = every_day_records()
    built, _, _ = core.build_tables(records, frames(), SPEC, drop_outside=False)
    rows, _, _ = core.build_rows(records, frames(), SPEC, drop_outside=False)
    for split in core.SPLITS:
        new, old = Dataset(built[split]), Dataset.from_list(rows[split])
        assert new.features == old.features and new._fingerprint == old._fingerprint
        new.save_to_disk(str(tmp_path / "new" / split))
        old.save_to_disk(str(tmp_path / "old" / split))
    saved = sorted(p.relative_to(tmp_path / "old") for p in (tmp_path / "old").rglob("*.*"))
    assert saved == sorted(p.relative_to(tmp_path / "new") for p in (tmp_path / "new").rglob("*.*"))
    assert len(saved) == 9  # the arrow file, dataset_info.json and state.json of each split
    for path in saved:
        assert (tmp_path / "new" / path).read_bytes() == (tmp_path / "old" / path).read_bytes()


def test_the_input_hash_follows_the_price_files_bytes_and_the_bars_without_one():
    import pandas as pd

    records = b'{"uid": "ACME-2024-01-02"}\n'
    bars = frames(("ACME",))["ACME"]
    from_file = bars.copy()
    from_file.attrs["file_sha256"] = hashlib.sha256(b"the file's bytes").hexdigest()

    def digest(frame, data=records):
        return core.input_hash(io.BytesIO(data), [("ACME", frame)])

    assert digest(from_file) == digest(from_file.copy())  # deterministic
    assert digest(from_file) != digest(from_file, records + b"\n")  # the records count
    other = from_file.copy()
    other.attrs["file_sha256"] = hashlib.sha256(b"the file's bytes, edited").hexdigest()
    assert digest(other) != digest(from_file)  # the file's bytes, not the bars, decide
    # no file behind the bars (a network provider's): pandas' row hashes of the bars
    assert digest(bars) == digest(bars.copy())
    moved = bars.copy()
    moved.loc[3, "close"] += 0.01
    assert digest(moved) != digest(bars)
    expected = hashlib.sha256(records)
    rows = pd.util.hash_pandas_object(bars, index=False).to_numpy().tobytes()
    expected.update(f"ACME\0{hashlib.sha256(rows).hexdigest()}\n".encode())
    assert digest(bars) == expected.hexdigest()  # what the card's input_sha256 documents


def test_unpurged_records_whose_window_reaches_the_next_split_fail_the_audit():
    rows, bar_dates, _ = tables()
    problems = core.audit(rows, bar_dates, SPEC, 5).problems
    # the last 5 sessions of train and of validation, two tickers each
    assert len(problems) == 2 * 5 + 2 * 5
    assert problems[0] == (
        "the 5-day forward window of train record ACME-2024-11-22 ends on 2024-12-02, "
        "in the validation period (from 2024-12-02): it was not purged"
    )
    assert any("validation record ACME-2024-12-24 ends on 2025-01-02, in the test" in p
               for p in problems)  # fmt: skip


def purged_spec(**changes):
    return core.SplitSpec(**{**SPEC.__dict__, "validation_days": 61, "purge_window": 5, **changes})


def test_the_purge_drops_records_whose_window_reaches_the_next_split():
    spec = purged_spec()  # validation from 2024-11-01
    rows, bar_dates, dropped = tables(spec)
    assert dropped == Counter({"purged_train": 2 * 5, "purged_validation": 2 * 5})
    # 2024-10-25 + 5 sessions = 2024-11-01 (validation); 2024-10-24 + 5 = 2024-10-31
    assert max(dates(rows, "train")) == "2024-10-24"
    # 2024-12-24 + 5 sessions = 2025-01-02 (Christmas closed); 2024-12-23 + 5 = 2024-12-31
    assert max(dates(rows, "validation")) == "2024-12-23"
    assert not core.audit(rows, bar_dates, spec, 5).problems
    assert core.audit(rows, bar_dates, spec, 6).problems  # a longer window than purged for
    info = core.card(rows, spec, dropped, core.Audit(), "h", {})
    assert info["purged"] == {"train": 10, "validation": 10}
    assert info["split_settings"]["purge_window"] == 5
    markdown = core.card_markdown(info, 5)
    assert "5-day forward window ends in the embargo or the next split): 10 train records" in (
        markdown
    )
    assert "10 validation records (window reaching test)" in markdown


def test_the_card_counts_what_the_rows_hold():
    rows, _, dropped = core.build_rows(every_day_records(), frames(), SPEC, drop_outside=False)
    info = core.card(tables()[0], SPEC, dropped, core.Audit(), "h", {})
    for part in info["splits"]:
        split = rows[part["split"]]
        assert part["records"] == len(split)
        assert (part["first_date"], part["last_date"]) == (split[0]["as_of_date"],
                                                           split[-1]["as_of_date"])  # fmt: skip
        assert part["prompt_chars"] == core.percentiles([len(r["prompt"]) for r in split])
        assert part["completion_chars"] == core.percentiles([len(r["completion"]) for r in split])
        assert part["tickers"] == dict(Counter(r["ticker"] for r in split))


def test_the_purge_comes_before_the_embargo():
    rows, _, dropped = tables(purged_spec(embargo_days=3))
    # 3 embargoed sessions before each split, and the 5 before those purged
    assert dropped == Counter({"embargo": 2 * 2 * 3, "purged_train": 10, "purged_validation": 10})
    assert max(dates(rows, "train")) == "2024-10-21"
    assert max(dates(rows, "validation")) == "2024-12-18"


@pytest.mark.parametrize(
    ("train_end", "window", "embargo", "first"),
    [
        (dt.date(2024, 12, 31), 30, 0, dt.date(2024, 10, 7)),  # 60 sessions to 2024-12-31
        (dt.date(2024, 12, 31), 5, 1, dt.date(2024, 12, 13)),  # 12 sessions, Christmas closed
        (dt.date(2024, 12, 29), 1, 0, dt.date(2024, 12, 26)),  # a Sunday: 12-26 and 12-27
    ],
)
def test_auto_validation_days_count_trading_days(train_end, window, embargo, first):
    days = core.validation_days_for("auto", train_end, window, embargo)
    assert train_end - dt.timedelta(days=days - 1) == first
    assert core.validation_days_for(30, train_end, window, embargo) == 30


def test_validation_days_are_auto_by_default_or_a_number(tmp_path):
    assert load_params(tmp_path / "none.yaml", env={}).dataset.validation_days == "auto"
    params = tmp_path / "params.yaml"
    params.write_text("dataset:\n  validation_days: 45\n")
    assert load_params(params, env={}).dataset.validation_days == 45
    params.write_text("dataset:\n  validation_days: soon\n")
    with pytest.raises(ConfigError, match="validation_days must be auto or a whole number"):
        load_params(params, env={})


def test_a_split_emptied_by_the_purge_says_so():
    spec = core.SplitSpec(**{**SPEC.__dict__, "purge_window": 30})
    rows, _, dropped = tables(spec)
    assert dropped["purged_validation"] == 42
    with pytest.raises(
        CharlieError,
        match=r"^the validation split is empty: no record dated between 2024-12-02 and "
        r"2024-12-31 is kept \(42 were purged: their 30-day forward windows reach the next "
        r"split; lengthen validation_days or use auto\)\.$",
    ):
        core.check_splits(rows, spec, dropped)


def row_at(rows, split, at=0):
    return rows[split].slice(at % rows[split].num_rows, 1).to_pylist()[0]


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            lambda rows, bars: appended(rows, "test", row_at(rows, "train")),
            "is in both train and test",
        ),
        (
            lambda rows, bars: appended(rows, "validation", {**row_at(rows, "test"), "uid": "X-1"}),
            "is in both validation and test",
        ),
        (
            lambda rows, bars: appended(
                rows,
                "train",
                {**row_at(rows, "validation", -1), "uid": "Y-1", "as_of_date": "2024-12-31"},
            ),
            "is in both",
        ),
        (
            lambda rows, bars: bars.__setitem__(row_at(rows, "test")["uid"], dt.date(2025, 4, 30)),
            "used a bar from 2025-04-30, after its date",
        ),
    ],
    ids=["uid-overlap", "date-overlap", "order", "future-bar"],
)
def test_the_audit_trips_on_crafted_leaks(tamper, message):
    rows, bar_dates, _ = tables()
    tamper(rows, bar_dates)
    problems = core.audit(rows, bar_dates, SPEC, 30).problems
    assert problems and any(message in p for p in problems)


def test_out_of_order_splits_are_a_problem():
    rows = {
        "train": pa.Table.from_pylist([{"uid": "A-1", "as_of_date": "2024-12-10"}]),
        "validation": pa.Table.from_pylist([{"uid": "A-2", "as_of_date": "2024-12-05"}]),
        "test": pa.table(
            {"uid": pa.array([], pa.string()), "as_of_date": pa.array([], pa.string())}
        ),
    }
    problems = core.audit(rows, {}, SPEC, 1).problems
    assert problems == [
        "train ends on 2024-12-10, not before validation starts on 2024-12-05",
        "the 1-day forward window of train record A-1 ends on 2024-12-11, in the validation "
        "period (from 2024-12-02): it was not purged",
    ]


def test_records_outside_every_split_fail_or_are_dropped():
    records = every_day_records(start=dt.date(2023, 10, 2))
    with pytest.raises(
        CharlieError, match=r"^32 records are dated outside every split \(e.g. ACME-2023-10-02\)"
    ):
        core.build_rows(records, frames(), SPEC, drop_outside=False)
    _, _, dropped = core.build_rows(records, frames(), SPEC, drop_outside=True)
    assert dropped == Counter({"outside": 32})


def test_an_empty_split_is_one_sentence():
    rows, _, _ = core.build_tables(
        every_day_records(end=dt.date(2024, 11, 1)), frames(), SPEC, drop_outside=True
    )
    with pytest.raises(
        CharlieError,
        match=r"^the validation split is empty: no record dated between 2024-12-02 and 2024-12-31\.$",
    ):
        core.check_splits(rows, SPEC)


def test_train_end_after_test_start_is_a_config_error(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text('dataset:\n  train_end: "2025-02-01"\n')
    with pytest.raises(
        ConfigError, match=r"train_end \(2025-02-01\) must be before test_start \(2025-01-01\)"
    ):
        load_params(params, env={})


def test_the_seeds_env_names_set_the_split_dates(tmp_path):
    params = load_params(
        tmp_path / "none.yaml",
        env={"TRAIN_END_DATE": "2024-11-30", "TEST_START_DATE": "2024-12-15"},
    )
    assert params.dataset.train_end == dt.date(2024, 11, 30)
    assert params.dataset.test_start == dt.date(2024, 12, 15)


# ------------------------------------------------------------------ the stage, end to end


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    """make demo's parse step on the bundled sample."""
    out = tmp_path_factory.mktemp("parsed")
    assert main(["parse", "--params", str(REPO / "params.yaml"), "--input-dir", str(SAMPLES / "xml"),
                 "--out", str(out / "records.jsonl"), "--rejects", str(out / "rejects.jsonl"),
                 "--report", str(out / "report.json")]) == 0  # fmt: skip
    return out / "records.jsonl"


def run_dataset(tmp_path, records, *extra):
    return main(["dataset", "--params", str(REPO / "params.yaml"), "--records", str(records),
                 "--out", str(tmp_path / "ds"), "--card", str(tmp_path / "card.json"), *extra])  # fmt: skip


def test_round_trip_from_the_sample_through_parse_and_dataset(tmp_path, parsed, monkeypatch):
    monkeypatch.chdir(REPO)  # params.yaml's price directory is relative to the repository
    assert run_dataset(tmp_path, parsed) == 0
    dataset = load_from_disk(str(tmp_path / "ds"))
    card = json.loads((tmp_path / "card.json").read_text())
    records = read_jsonl(parsed)
    assert set(dataset) == {"train", "validation", "test"}
    purged = card["purged"]
    assert purged["train"] > 0 and purged["validation"] > 0  # auto validation, 30-day window
    assert sum(len(dataset[s]) for s in dataset) + sum(purged.values()) == len(records)
    assert card["split_settings"]["purge_window"] == 30
    assert card["split_settings"]["validation_start"] == "2024-10-07"  # 60 sessions
    for split, later in (("train", "validation"), ("validation", "test")):
        start = dt.date.fromisoformat(min(dataset[later]["as_of_date"]))
        assert all(shift_trading_days(dt.date.fromisoformat(d), 30) < start
                   for d in dataset[split]["as_of_date"])  # fmt: skip
    assert card["records"] == {s: len(dataset[s]) for s in ("train", "validation", "test")}
    assert dataset.column_names["train"] == [
        "prompt",
        "completion",
        "uid",
        "ticker",
        "as_of_date",
        "action",
    ]
    by_uid = {r["uid"]: r for r in records}
    row = dataset["test"][0]
    source = by_uid[row["uid"]]
    assert row["completion"].endswith(f"<action><{source['action']}></action>")
    assert source["reasoning"] in row["completion"]
    assert "Market snapshot for" in row["prompt"] and source["reasoning"] not in row["prompt"]
    assert (tmp_path / "card.md").read_text().startswith("# Dataset card")
    assert card["price_sources"] == [
        {"ticker": t, "provider": "file"} for t in sorted({r["ticker"] for r in records})
    ]
    assert [s["split"] for s in card["splits"]] == ["train", "validation", "test"]
    assert sum(card["splits"][0]["actions"].values()) == card["records"]["train"]


def test_unknown_ticker_is_one_sentence_and_nothing_is_replaced(
    tmp_path, parsed, monkeypatch, capsys
):
    monkeypatch.chdir(REPO)
    assert run_dataset(tmp_path, parsed) == 0
    before = sorted(p.name for p in (tmp_path / "ds").rglob("*"))
    bad = tmp_path / "bad.jsonl"
    shutil.copy(parsed, bad)
    with bad.open("a") as handle:
        handle.write(
            json.dumps({**read_jsonl(parsed)[0], "uid": "ZZZZ-2024-01-02", "ticker": "ZZZZ"}) + "\n"
        )
    assert run_dataset(tmp_path, bad) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("charlie dataset: error: no price data for ZZZZ from any provider (file)")
    assert sorted(p.name for p in (tmp_path / "ds").rglob("*")) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_missing_records_file_is_one_sentence(tmp_path, capsys):
    assert run_dataset(tmp_path, tmp_path / "nope.jsonl") == 2
    assert "records file" in capsys.readouterr().err and not Path(tmp_path / "ds").exists()


def write_records(path: Path, records, newline=b"\n") -> Path:
    import orjson

    path.write_bytes(newline.join(orjson.dumps(r) for r in records))  # no final newline
    return path


def test_scanned_records_are_the_records_read_whole(tmp_path):
    """scan_records: the same records as read_records, in order, whatever the line ends."""
    from charlie.records import read_records, scan_records

    records = every_day_records(("ACME",))[:5]
    records[2]["reasoning"] = 'line one\nline two\r\n and a quote " ü'
    for newline in (b"\n", b"\r\n", b"\r", b"\n\n \n"):
        path = write_records(tmp_path / "records.jsonl", records, newline)
        scanned = scan_records(path)
        assert read_records(path) == records
        assert len(scanned) == 5 and scanned.uids == [r["uid"] for r in records]
        assert (scanned.tickers, scanned.dates, scanned.actions) == tuple(
            [r[k] for r in records] for k in ("ticker", "as_of_date", "action")
        )
        assert list(scanned.take([4, 0, 2, 2])) == [records[i] for i in (4, 0, 2, 2)]
    (tmp_path / "empty.jsonl").write_bytes(b"\n \n")
    for reader in (read_records, scan_records):
        with pytest.raises(CharlieError, match="holds no record"):
            reader(tmp_path / "empty.jsonl")
        with pytest.raises(CharlieError, match="does not exist; run `charlie parse` first"):
            reader(tmp_path / "nope.jsonl")


def test_tables_from_scanned_records_are_the_tables_from_dicts(tmp_path):
    """The stage's path (records as columns, text read back from the file) builds the same
    tables, bar dates, drops and errors as records held as dicts."""
    from charlie.records import scan_records, wanted_ranges

    records = every_day_records(start=dt.date(2023, 10, 2))
    records[7]["reasoning"] = "Ünïcode — and\nnewlines"
    path = write_records(tmp_path / "records.jsonl", records)
    scanned = scan_records(path)
    assert wanted_ranges(scanned, 30, 5) == wanted_ranges(records, 30, 5)
    spec = core.SplitSpec(**{**SPEC.__dict__, "embargo_days": 3, "purge_window": 5})
    built = core.build_tables(scanned, frames(), spec, drop_outside=True)
    expected = core.build_tables(records, frames(), spec, drop_outside=True)
    assert built[1:] == expected[1:] and built[2]["outside"] == 32
    for split in core.SPLITS:
        assert built[0][split].equals(expected[0][split])
    messages = []
    for source in (scanned, records):
        with pytest.raises(CharlieError, match=r"^32 records are dated outside") as error:
            core.build_tables(source, frames(), spec, drop_outside=False)
        messages.append(str(error.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize(
    ("line", "what"),
    [(b"{not json", "is not JSON"), (b'{"ticker": "ACME"}', "has no 'as_of_date' field"),
     (b"[1, 2]", "is not a JSON object")],
)  # fmt: skip
def test_a_broken_records_line_is_one_sentence_naming_it(tmp_path, line, what):
    from charlie.records import scan_records

    good = b'{"ticker": "ACME", "as_of_date": "2024-01-02", "uid": "u1", "action": "BUY"}'
    path = tmp_path / "records.jsonl"
    path.write_bytes(good + b"\n\n" + line + b"\n")
    with pytest.raises(CharlieError, match=f"records.jsonl line 3 {what}"):
        scan_records(path)
