"""Records + prices to SFT rows in strict chronological splits, with a leakage audit and a card.

Pure core of ``charlie dataset``. The split rules are the seed's:

* train: ``train_start`` <= date < validation start
* validation: the last ``validation_days`` calendar days of the training period,
  i.e. ``train_end - validation_days`` < date <= ``train_end`` (:func:`validation_days_for`
  turns ``auto`` into calendar days)
* test: ``test_start`` <= date (<= ``test_end`` when set)

With ``embargo_days`` = k > 0, records dated within the k trading days before the start of a
later split are dropped (train before validation, validation before test) and counted.

With ``purge_window`` = L > 0 (the longest forward window, in trading days), every other train
or validation record whose window (the L sessions after its date) ends in that embargo or in
the next split is dropped and counted as purged (López de Prado's purge): no label of one split
is computed from prices of the next. :func:`audit` checks that none is left.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from charlie import ACTIONS
from charlie.calendar import DEFAULT as DEFAULT_CALENDAR
from charlie.calendar import get_calendar
from charlie.errors import CharlieError
from charlie.prompts import prompt_text
from charlie.records import RecordColumns
from charlie.snapshot import TickerSnapshots

SPLITS = ("train", "validation", "test")
COLUMNS = ("prompt", "completion", "uid", "ticker", "as_of_date", "action")
"""The DatasetDict's columns, in order; every one is an Arrow string."""


@dataclass(frozen=True)
class SplitSpec:
    """The split settings (mirrors ``DatasetParams``)."""

    train_start: dt.date
    train_end: dt.date
    validation_days: int
    test_start: dt.date
    test_end: dt.date | None = None
    embargo_days: int = 0
    purge_window: int = 0
    calendar: str = DEFAULT_CALENDAR  # the exchange whose sessions embargo and purge count

    def shift(self, day: dt.date, sessions: int) -> dt.date:
        """The session ``sessions`` after (or before) ``day`` on the spec's exchange."""
        return get_calendar(self.calendar).shift(day, sessions)

    @property
    def validation_start(self) -> dt.date:
        return self.train_end - dt.timedelta(days=self.validation_days - 1)

    def next_start(self, split: str) -> dt.date:
        """The first day of the split after ``split`` (train or validation)."""
        return self.validation_start if split == "train" else self.test_start

    def purges(self, day: dt.date, split: str) -> bool:
        """True when a ``split`` record's forward window ends in the embargo or the next split."""
        if not self.purge_window:
            return False
        boundary = self.next_start(split)
        if self.embargo_days:
            boundary = self.shift(boundary, -self.embargo_days)
        return self.shift(day, self.purge_window) >= boundary

    def as_dict(self) -> dict[str, Any]:
        return {
            "train_start": self.train_start.isoformat(),
            "train_end": self.train_end.isoformat(),
            "validation_days": self.validation_days,
            "validation_start": self.validation_start.isoformat(),
            "test_start": self.test_start.isoformat(),
            "test_end": self.test_end.isoformat() if self.test_end else None,
            "embargo_days": self.embargo_days,
            "purge_window": self.purge_window,
            "calendar": self.calendar,
        }


def validation_days_for(
    setting: int | str,
    train_end: dt.date,
    longest_window: int,
    embargo_days: int,
    calendar: str = DEFAULT_CALENDAR,
) -> int:
    """Calendar days of the validation window: a number as given, ``auto`` from trading days.

    ``auto`` covers the last 2 x (``longest_window`` + ``embargo_days``) trading days up to
    ``train_end``: the later half is purged or embargoed before the test period, the earlier
    half stays.
    """
    if setting != "auto":
        return int(setting)
    sessions = 2 * (longest_window + embargo_days)
    exchange = get_calendar(calendar)
    last = train_end if exchange.is_session(train_end) else exchange.shift(train_end, -1)
    first = exchange.shift(last, -(sessions - 1)) if sessions > 1 else last
    return (train_end - first).days + 1


def assign_split(day: dt.date, spec: SplitSpec) -> str:
    """One date's place: ``train``, ``validation``, ``test``, ``embargo``, ``purged_train``,
    ``purged_validation`` or ``outside``."""
    for split, inside in (
        ("train", spec.train_start <= day < spec.validation_start),
        ("validation", spec.validation_start <= day <= spec.train_end),
    ):
        if not inside:
            continue
        if spec.embargo_days and day >= spec.shift(spec.next_start(split), -spec.embargo_days):
            return "embargo"
        return f"purged_{split}" if spec.purges(day, split) else split
    if day >= spec.test_start and (spec.test_end is None or day <= spec.test_end):
        return "test"
    return "outside"


def completion_text(record: dict[str, Any]) -> str:
    """``<reasoning>…</reasoning><support>…</support><action><BUY></action>``."""
    return (
        f"<reasoning>{record['reasoning']}</reasoning>"
        f"<support>{record['support']}</support>"
        f"<action><{record['action']}></action>"
    )


@dataclass
class Audit:
    """The leakage audit's findings: any problem stops the stage."""

    problems: list[str] = field(default_factory=list)


def audit(
    rows: dict[str, pa.Table],
    bar_dates: dict[str, dt.date | None],
    spec: SplitSpec,
    longest_window: int,
) -> Audit:
    """Check for leaks between splits and from later bars.

    A problem is: a date or uid in two splits, splits out of order, a snapshot that used a bar
    after its date, or a train (validation) record whose ``longest_window``-day forward window
    reaches the validation (test) period, i.e. one the purge should have dropped.

    Args:
        rows: Each split's rows (:func:`build_tables`; ``uid`` and ``as_of_date`` at least).
        bar_dates: uid to the date of the bar its snapshot used.
        spec: The split settings.
        longest_window: The longest forward-return horizon in trading days.
    """
    result = Audit()
    keys = {  # split to its (uid, as_of_date) pairs
        split: list(zip(*(rows[split][c].to_pylist() for c in ("uid", "as_of_date")), strict=True))
        for split in SPLITS
    }
    seen_uid: dict[str, str] = {}
    seen_date: dict[str, str] = {}
    for split, pairs in keys.items():
        for uid, as_of in pairs:
            for key, seen in ((uid, seen_uid), (as_of, seen_date)):
                other = seen.setdefault(key, split)
                if other != split:
                    result.problems.append(f"{key} is in both {other} and {split}")
            used = bar_dates.get(uid)
            if used is not None and used.isoformat() > as_of:
                result.problems.append(
                    f"the snapshot of {uid} used a bar from {used}, after its date"
                )
    bounds = [
        (split, min(d for _, d in pairs), max(d for _, d in pairs))
        for split, pairs in keys.items()
        if pairs
    ]
    for (a, _, a_last), (b, b_first, _) in itertools.pairwise(bounds):
        if a_last >= b_first:
            result.problems.append(f"{a} ends on {a_last}, not before {b} starts on {b_first}")
    for split, later in (("train", "validation"), ("validation", "test")):
        start = spec.next_start(split)
        for uid, as_of in keys[split]:
            end = spec.shift(dt.date.fromisoformat(as_of), longest_window)
            if end >= start:
                result.problems.append(
                    f"the {longest_window}-day forward window of {split} record {uid} "
                    f"ends on {end}, in the {later} period (from {start}): it was not purged"
                )
    return result


def percentiles(values: Sequence[int]) -> dict[str, float]:
    """min, p50, p90, p99 and max of character lengths."""
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return float(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))])

    return {"min": float(ordered[0]), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99),
            "max": float(ordered[-1]), "mean": round(statistics.fmean(ordered), 1)}  # fmt: skip


def card(
    rows: dict[str, pa.Table],
    spec: SplitSpec,
    dropped: Counter[str],
    findings: Audit,
    input_hash: str,
    prices: dict[str, str],
) -> dict[str, Any]:
    """The dataset card: counts, drops, purges, balance, lengths, settings and the input hash.

    ``findings`` passed the audit (no problems) by the time a card is written; it is kept in
    the signature for the stage's call.
    """
    splits = []
    for split in SPLITS:
        part = rows[split]
        n = part.num_rows
        actions = Counter(part["action"].to_pylist())
        dates = part["as_of_date"]
        splits.append({
            "split": split,
            "records": n,
            "first_date": pc.min(dates).as_py(),
            "last_date": pc.max(dates).as_py(),
            "actions": {a: actions.get(a, 0) for a in ACTIONS},
            "label_balance": {a: round(actions.get(a, 0) / n, 4) if n else 0.0 for a in ACTIONS},
            "tickers": dict(sorted(Counter(part["ticker"].to_pylist()).items())),
            # utf8_length counts code points, as len() of a Python string does
            "prompt_chars": percentiles(pc.utf8_length(part["prompt"]).to_pylist()),
            "completion_chars": percentiles(pc.utf8_length(part["completion"]).to_pylist()),
        })  # fmt: skip
    # Headline numbers first; the details are lists, which `dvc metrics show` leaves out.
    return {
        "records": {s["split"]: s["records"] for s in splits},
        "dropped": {
            "embargo": dropped.get("embargo", 0),
            "outside_splits": dropped.get("outside", 0),
        },
        "purged": {
            "train": dropped.get("purged_train", 0),
            "validation": dropped.get("purged_validation", 0),
        },
        "split_settings": spec.as_dict(),
        "input_sha256": input_hash,
        "price_sources": [{"ticker": t, "provider": p} for t, p in sorted(prices.items())],
        "splits": splits,
    }


def card_markdown(info: dict[str, Any], longest_window: int) -> str:
    """The card as Markdown for people."""
    s = info["split_settings"]
    sessions = len(
        get_calendar(s.get("calendar", DEFAULT_CALENDAR)).between(
            dt.date.fromisoformat(s["validation_start"]), dt.date.fromisoformat(s["train_end"])
        )
    )
    purged = info["purged"]
    lines = [
        "# Dataset card",
        "",
        f"Chronological splits: train {s['train_start']} .. before {s['validation_start']}, "
        f"validation {s['validation_start']} .. {s['train_end']} (the last "
        f"{s['validation_days']} days of training, {sessions} trading days), test "
        f"{s['test_start']} .. {s['test_end'] or 'end of data'}; embargo {s['embargo_days']} "
        "trading days.",
        "",
        "| split | records | first | last | "
        + " | ".join(ACTIONS)
        + " | prompt p50 | completion p50 |",
        "|---|---|---|---|" + "---|" * len(ACTIONS) + "---|---|",
    ]
    for part in info["splits"]:
        split = part["split"]
        shares = " | ".join(f"{part['label_balance'][a]:.0%}" for a in ACTIONS)
        lines.append(
            f"| {split} | {part['records']} | {part['first_date']} | {part['last_date']} | "
            f"{shares} | {part['prompt_chars'].get('p50', 0):.0f} | "
            f"{part['completion_chars'].get('p50', 0):.0f} |"
        )
    lines += [
        "",
        f"Dropped: {info['dropped']['embargo']} in the embargo, "
        f"{info['dropped']['outside_splits']} outside every split.",
        f"Purged (records whose {longest_window}-day forward window ends in the embargo or "
        f"the next split): {purged['train']} train records (window reaching validation), "
        f"{purged['validation']} validation records (window reaching test).",
        f"Input hash (records + prices): `{info['input_sha256']}`.",
        "Prices: "
        + ", ".join(f"{p['ticker']} from {p['provider']}" for p in info["price_sources"])
        + ".",
        "",
    ]
    return "\n".join(lines)


def input_hash(records: BinaryIO, frames: Iterable[tuple[str, pd.DataFrame]]) -> str:
    """sha256 over the records file and, per ticker, what its price bars were read from.

    Each ticker adds its name and a sha256: of the price file's bytes where the bars came
    from one (the ``file`` provider keeps it in ``frame.attrs["file_sha256"]``), else of
    pandas' row hashes of the bars served (a network provider's answer, through the parquet
    cache: the cache file also holds other ranges and its coverage, which change without the
    bars changing). Formatting every bar as CSV to hash it cost a tenth of the stage.

    Args:
        records: The records file, open for reading bytes (read in blocks, not held whole).
        frames: (ticker, bars) in a fixed order.
    """
    digest = hashlib.file_digest(records, "sha256")
    for ticker, frame in frames:
        source = frame.attrs.get("file_sha256")
        if source is None:
            rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()
            source = hashlib.sha256(rows.tobytes()).hexdigest()
        digest.update(f"{ticker}\0{source}\n".encode())
    return digest.hexdigest()


def check_splits(
    rows: dict[str, pa.Table], spec: SplitSpec, dropped: Counter[str] | None = None
) -> None:
    """One sentence for an empty split (naming the purged records when there were any)."""
    for split in SPLITS:
        if not rows[split].num_rows:
            window = {
                "train": f"{spec.train_start} and {spec.validation_start - dt.timedelta(days=1)}",
                "validation": f"{spec.validation_start} and {spec.train_end}",
                "test": f"{spec.test_start} and {spec.test_end or 'the end of the data'}",
            }[split]
            purged = (dropped or Counter()).get(f"purged_{split}", 0)
            why = (
                f" is kept ({purged} were purged: their {spec.purge_window}-day forward windows "
                "reach the next split; lengthen validation_days or use auto)"
                if purged
                else ""
            )
            raise CharlieError(
                f"the {split} split is empty: no record dated between {window}{why}."
            )


def check_history(bar_dates: dict[str, dt.date | None], max_share: float) -> None:
    """One sentence with the numbers when too many prompts have no price bar at all."""
    missing = sorted(uid for uid, date in bar_dates.items() if date is None)
    if bar_dates and len(missing) > max_share * len(bar_dates):
        raise CharlieError(
            f"{len(missing)} of {len(bar_dates)} prompts ({len(missing) / len(bar_dates):.1%}) "
            f"have no price bar on or before their date (e.g. {missing[0]}), above "
            f"dataset.max_no_history_share {max_share:.1%}: the prices do not cover the theses."
        )


def build_tables(
    records: Sequence[dict[str, Any]] | RecordColumns,
    frames: dict[str, pd.DataFrame],
    spec: SplitSpec,
    *,
    drop_outside: bool,
) -> tuple[dict[str, pa.Table], dict[str, dt.date | None], Counter[str]]:
    """Split records and turn each into a prompt/completion row, one Arrow table per split.

    The splits are decided from each record's date and ticker alone, and the rows ordered
    (chronologically, then by ticker) before any text exists; each column is then written
    straight into Arrow from a generator, and a record's reasoning and support are read only
    while its completion is written (:class:`~charlie.records.RecordColumns` reads them back
    from records.jsonl): neither the records nor the prompts and completions are ever all
    held as Python objects beside their Arrow copy, which at hundreds of tickers doubled the
    stage's memory and then some. Each column is one Arrow chunk, as ``Dataset.from_list``
    makes it, so the saved DatasetDict (fingerprint included) is the same as one built from
    the rows as dicts.

    Args:
        records: Parsed records (``charlie parse``'s contract): dicts, or their columns
            (:func:`charlie.records.scan_records`).
        frames: Ticker to its price bars.
        spec: The split settings.
        drop_outside: Drop records outside every split (counted) instead of failing.

    Returns:
        One table per split (columns :data:`COLUMNS`), the bar date each snapshot used (by
        uid), and drop counts (``embargo``, ``outside``, ``purged_train``,
        ``purged_validation``).

    Raises:
        CharlieError: Records outside every split when ``drop_outside`` is false.
    """
    if not isinstance(records, RecordColumns):
        records = RecordColumns.from_dicts(records)
    tickers, dates, uids = records.tickers, records.dates, records.uids
    dropped: Counter[str] = Counter()
    by_ticker: dict[str, list[tuple[int, str]]] = {}  # ticker -> (record index, split)
    outside: list[int] = []
    places: dict[str, str] = {}  # date -> its split: a corpus repeats its dates across tickers
    for i, (ticker, date) in enumerate(zip(tickers, dates, strict=True)):
        split = places.get(date)
        if split is None:
            split = places[date] = assign_split(dt.date.fromisoformat(date), spec)
        if split not in SPLITS:
            dropped[split] += 1
            if split == "outside":
                outside.append(i)
            continue
        by_ticker.setdefault(ticker, []).append((i, split))
    if outside and not drop_outside:
        first = min(outside, key=lambda i: dates[i])
        raise CharlieError(
            f"{len(outside)} records are dated outside every split (e.g. {uids[first]}); "
            "adjust the split dates or set dataset.outside_splits: drop."
        )

    # (record index, its ticker's indicators, its date, its bar's position) per split
    placed: dict[str, list[tuple[int, TickerSnapshots, dt.date, int]]] = {
        split: [] for split in SPLITS
    }
    bar_dates: dict[str, dt.date | None] = {}
    for ticker, items in by_ticker.items():
        source = TickerSnapshots(ticker, frames[ticker])
        days = [dt.date.fromisoformat(dates[i]) for i, _ in items]
        for (i, split), day, pos in zip(items, days, source.locate(days), strict=True):
            bar_dates[uids[i]] = source.bar_date(pos)
            placed[split].append((i, source, day, pos))
    del by_ticker
    short = {"uid": uids, "ticker": tickers, "as_of_date": dates, "action": records.actions}
    tables = {}
    for split, part in placed.items():
        part.sort(key=lambda p: (dates[p[0]], tickers[p[0]]))  # the order a reader expects
        order = [i for i, *_ in part]
        columns = {
            "prompt": (prompt_text(source.text(day, pos)) for _, source, day, pos in part),
            "completion": (completion_text(record) for record in records.take(order)),
            **{key: [short[key][i] for i in order] for key in COLUMNS[2:]},  # short: lists
        }
        tables[split] = pa.table({name: _strings(values) for name, values in columns.items()})
        part.clear()  # its snapshots' share of memory goes once its table is built
    return tables, bar_dates, dropped


def _strings(values: Iterable[str], batch: int = 1024) -> pa.Array:
    """One Arrow string array (a single chunk, as ``Dataset.from_list`` makes) from strings.

    ``pa.array`` collects a generator into a list first, which would hold a whole column as
    Python strings again; made ``batch`` at a time, a column costs one Arrow copy at most,
    while the batches are joined.
    """
    values, parts = iter(values), []
    while chunk := list(itertools.islice(values, batch)):
        parts.append(pa.array(chunk, type=pa.string()))
    return pa.concat_arrays(parts) if parts else pa.array([], type=pa.string())


def build_rows(
    records: Sequence[dict[str, Any]] | RecordColumns,
    frames: dict[str, pd.DataFrame],
    spec: SplitSpec,
    *,
    drop_outside: bool,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dt.date | None], Counter[str]]:
    """:func:`build_tables` with each split as a list of row dicts (keys :data:`COLUMNS`).

    For callers that want a sample's rows in hand (tests, benchmarks); the stage keeps the
    tables, which is what bounds its memory.
    """
    tables, bar_dates, dropped = build_tables(records, frames, spec, drop_outside=drop_outside)
    return {split: table.to_pylist() for split, table in tables.items()}, bar_dates, dropped
