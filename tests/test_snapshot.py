"""Market snapshots: point in time, honest about missing data, consistent with the theses."""

import datetime as dt
import random
import re

import pandas as pd
import pytest

from charlie.indicators import RollingIndicators
from charlie.parsing import parse_files
from charlie.snapshot import indicator_frame, snapshots_for_ticker

from .conftest import SAMPLES


@pytest.fixture(scope="module")
def acme() -> pd.DataFrame:
    return pd.read_csv(SAMPLES / "prices" / "ACME.csv", parse_dates=["date"])


def text(bars: pd.DataFrame, day: dt.date) -> str:
    return snapshots_for_ticker("ACME", bars, [day])[0].text


DATES = [dt.date(2022, 10, 11), dt.date(2023, 10, 24), dt.date(2024, 3, 28), dt.date(2024, 3, 30)]


@pytest.mark.parametrize("day", DATES, ids=str)
@pytest.mark.parametrize("column", ["open", "high", "low", "close", "adj_close", "volume"])
def test_prices_after_the_date_do_not_change_the_snapshot(acme, day, column):
    before = text(acme, day)
    perturbed = acme.copy()
    later = perturbed["date"] > pd.Timestamp(day)
    perturbed[column] = perturbed[column].astype("float64")
    perturbed.loc[later, column] *= 1.37
    assert text(perturbed, day) == before  # byte for byte


@pytest.mark.parametrize("day", DATES[1:], ids=str)
def test_a_price_before_the_date_changes_it(acme, day):
    before = text(acme, day)
    perturbed = acme.copy()
    earlier = perturbed.index[perturbed["date"] <= pd.Timestamp(day)][-3]
    perturbed.loc[earlier, ["close", "adj_close"]] *= 1.05
    assert text(perturbed, day) != before


def test_a_date_without_a_bar_uses_the_last_bar_and_says_so(acme):
    snap = snapshots_for_ticker("ACME", acme, [dt.date(2024, 3, 30)])[0]  # a Saturday
    assert snap.bar_date == dt.date(2024, 3, 28)  # Good Friday 29th was closed
    assert (
        "No bar on 2024-03-30 (market closed or data missing); figures are from the last bar before it, 2024-03-28."
        in snap.text
    )


def test_missing_history_is_stated_not_invented(acme):
    first = text(acme, dt.date(2022, 10, 11))
    assert "Returns: not available (1 session of history)." in first
    assert "SMA20 and EMA20 not available (need 20 sessions; 1 session of history)" in first
    assert "RSI14 not available (needs 15 sessions" in first
    assert "52-week range: not available" in first
    none = snapshots_for_ticker("ACME", acme, [dt.date(2020, 1, 2)])[0]
    assert none.bar_date is None and "No price history is available" in none.text


def test_every_number_has_its_reading(acme):
    body = text(acme, dt.date(2024, 3, 28))
    assert re.search(r"RSI14 \d+\.\d \((overbought|firm|neutral|soft|oversold)\)", body)
    assert re.search(
        r"close \d+\.\d% (above|below) SMA20 \d+\.\d\d \((uptrend|downtrend|flat)\)", body
    )
    assert re.search(r"20-day \d+\.\d% annualised \((low|moderate|high|very high)\)", body)
    assert re.search(r"\d\.\d\dx its 20-day average \((heavy|quiet|normal)\)", body)
    assert re.search(r"52-week range: close \d+\.\d% below the high", body)


def test_vectorised_indicators_match_the_rolling_ones():
    rng = random.Random(5)
    closes, volumes = [50.0], [1e6]
    for _ in range(80):
        closes.append(closes[-1] * (1 + rng.gauss(0, 0.02)))
        volumes.append(1e6 * (1 + rng.random()))
    bars = pd.DataFrame({
        "date": pd.bdate_range("2024-01-01", periods=len(closes)),
        "open": closes, "high": [c * 1.01 for c in closes], "low": [c * 0.99 for c in closes],
        "close": closes, "adj_close": closes, "volume": volumes,
    })  # fmt: skip
    frame = indicator_frame(bars)
    roll = RollingIndicators()
    for i, row in bars.iterrows():
        snap = roll.update(row["close"], row["high"], row["low"], row["volume"])
        for name in ("ret1", "ret5", "ret20", "sma20", "rsi14", "volume_ratio", "volatility20"):
            expected = getattr(snap, name)
            got = frame.loc[i, name]
            assert pd.isna(got) if expected is None else got == pytest.approx(expected), (i, name)


def test_snapshot_numbers_agree_with_the_sample_theses():
    """The model must find in the prompt the numbers the thesis reasons from.

    The generator works from unrounded adjusted prices and the snapshot from the 4-decimal
    price file, so a printed figure may differ by one unit in its last place.
    """
    records = parse_files(sorted((SAMPLES / "xml").glob("*.xml"))).records
    by_ticker = {}
    for record in records:
        by_ticker.setdefault(record["ticker"], []).append(record)
    pairs = [  # (pattern in the thesis, pattern in the snapshot, last-place unit)
        (r"closed at (\d+\.\d\d)", r"close (\d+\.\d\d), volume", 0.01),
        (
            r"(\d+\.\d)% (?:above|below) its 20-day SMA",
            r"close (\d+\.\d)% (?:above|below) SMA20",
            0.1,
        ),
        (r"RSI14: \w+ \((\d+\.\d)\)", r"RSI14 (\d+\.\d)", 0.1),
        (r"5d ([+-]\d+\.\d)%", r"5-day ([+-]\d+\.\d)%", 0.1),
        (r"\((\d+\.\d\d)× average\)", r"(\d+\.\d\d)x its 20-day average", 0.01),
    ]
    checked = exact = 0
    for ticker, group in by_ticker.items():
        bars = pd.read_csv(SAMPLES / "prices" / f"{ticker}.csv", parse_dates=["date"])
        dates = [dt.date.fromisoformat(r["as_of_date"]) for r in group]
        for record, snap in zip(group, snapshots_for_ticker(ticker, bars, dates), strict=True):
            for in_thesis, in_snapshot, unit in pairs:
                if m := re.search(in_thesis, record["reasoning"] + "\n" + record["support"]):
                    got = re.search(in_snapshot, snap.text)
                    assert got, (record["uid"], in_snapshot)
                    a, b = float(m.group(1)), float(got.group(1))
                    assert abs(a - b) <= unit * 1.01, (record["uid"], a, b)
                    checked += 1
                    exact += a == b
    assert checked > 7000
    assert exact / checked > 0.999
