"""The sample corpus: reproducible, faithful to its documented rule, and rewarding that rule."""

import csv
import datetime as dt
import re
from collections import defaultdict

import pytest

from charlie.cli import main
from charlie.parsing import parse_files
from charlie.sample import (
    TICKER_NAMES,
    SampleSpec,
    generate,
    render_xml,
    score_to_action,
    ticker_names,
)
from charlie.tickers import valid_ticker

from .conftest import REPO, SAMPLES
from .test_indicators import reference_rsi


@pytest.fixture(scope="module")
def prices() -> dict[str, list[dict]]:
    out = {}
    for path in sorted((SAMPLES / "prices").glob("*.csv")):
        with path.open() as handle:
            out[path.stem] = [
                {k: (v if k == "date" else float(v)) for k, v in row.items()}
                for row in csv.DictReader(handle)
            ]
    return out


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return parse_files(sorted((SAMPLES / "xml").glob("*.xml"))).records


def independent_score(bars: list[dict], i: int) -> int:
    """The README's rule, recomputed from the price file without the generator's code."""
    closes = [b["adj_close"] for b in bars[: i + 1]]  # indicators use adjusted closes
    volumes = [b["volume"] for b in bars[: i + 1]]
    close, score = closes[-1], 0
    if len(closes) >= 20:
        sma = sum(closes[-20:]) / 20
        score += 1 if close >= 1.01 * sma else -1 if close <= 0.99 * sma else 0
    if len(closes) > 5:
        ret5 = close / closes[-6] - 1
        score += 1 if ret5 >= 0.02 else -1 if ret5 <= -0.02 else 0
    rsi = reference_rsi(closes)
    if rsi is not None:
        score += -1 if rsi >= 70 else 1 if rsi <= 30 else 0
    if len(volumes) >= 20 and len(closes) > 1 and volumes[-1] >= 1.5 * sum(volumes[-20:]) / 20:
        ret1 = close / closes[-2] - 1
        score += 1 if ret1 > 0 else -1 if ret1 < 0 else 0
    return score


def test_committed_sample_is_exactly_what_charlie_sample_generates(tmp_path):
    out = tmp_path / "generated"
    assert main(["sample", "--params", str(REPO / "params.yaml"), "--out-dir", str(out)]) == 0
    generated = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(SAMPLES) for p in SAMPLES.rglob("*") if p.is_file())
    assert generated == committed
    for rel in generated:
        assert (out / rel).read_bytes() == (SAMPLES / rel).read_bytes(), f"{rel}: run `make sample`"


def test_generation_is_deterministic_and_per_ticker():
    spec = SampleSpec(tickers=2, ipo_ticker=False)
    a, b = generate(spec), generate(spec)
    assert [render_xml(s, 7) for s in a] == [render_xml(s, 7) for s in b]
    wider = generate(SampleSpec(tickers=3, ipo_ticker=False))
    assert wider[0].bars == a[0].bars  # adding a ticker leaves the others unchanged
    assert generate(SampleSpec(tickers=2, ipo_ticker=False, seed=8))[0].bars != a[0].bars


def test_more_tickers_than_names_get_numbered_distinct_valid_names():
    names = ticker_names(45)
    assert names[:20] == list(TICKER_NAMES)
    assert names[20:22] == ["ACME2", "BOLT2"]
    assert names[40:] == ["ACME3", "BOLT3", "CRUX3", "DYNA3", "EONX3"]
    assert len(set(names)) == 45 and all(valid_ticker(n) for n in names)
    assert ticker_names(21)[:20] == ticker_names(20) == list(TICKER_NAMES)
    assert ticker_names(4, ["A", "A2"]) == ["A", "A2", "A22", "A3"]  # a taken name is skipped


def test_25_tickers_leave_the_first_20_byte_identical():
    short = {"start": dt.date(2024, 1, 2), "end": dt.date(2024, 1, 31), "detail": "full"}
    twenty = generate(SampleSpec(tickers=20, ipo_ticker=False, **short))
    more = generate(SampleSpec(tickers=25, **short))  # the IPO ticker is now the 25th
    assert [s.ticker for s in more] == ticker_names(25)
    assert [render_xml(s, 7) for s in more[:20]] == [render_xml(s, 7) for s in twenty]
    assert [s.bars for s in more[:20]] == [s.bars for s in twenty]
    assert more[-1].ticker == "EONX2" and more[-1].listed > more[0].listed


def test_sample_has_the_promised_shape(sample_manifest, prices):
    assert sample_manifest["spec"]["tickers"] == 6
    for ticker, info in sample_manifest["tickers"].items():
        bars = prices[ticker]
        assert [b["date"] for b in bars] == sorted(b["date"] for b in bars)
        assert info["bars"] == len(bars)
        for bar in bars:
            assert (
                bar["low"]
                <= min(bar["open"], bar["close"])
                <= max(bar["open"], bar["close"])
                <= bar["high"]
            )
            assert bar["volume"] > 0
    full = [t for t, info in sample_manifest["tickers"].items() if info["theses"] == 376]
    assert len(full) == 5  # the sixth lists mid-period
    assert any(abs(b["adj_close"] - b["close"]) > 0.01 for b in prices["ACME"][:100])


def test_every_thesis_states_the_rule_and_cites_its_prices(records, prices):
    agree = 0
    for record in records:
        bars = prices[record["ticker"]]
        i = next(k for k, b in enumerate(bars) if b["date"] == record["as_of_date"])
        score = independent_score(bars, i)
        net = int(re.search(r"Net signal ([+-]\d+)", record["support"]).group(1))
        assert net == score, record["uid"]
        assert f"{bars[i]['close']:.2f}" in record["reasoning"]
        agree += record["action"] == score_to_action(score)
    share = agree / len(records)
    assert 0.85 < share < 0.95  # label_noise = 0.1


def test_missing_history_is_said_not_invented(records):
    flux = [r for r in records if r["ticker"] == "FLUX"]
    assert "20-day SMA is not available yet" in flux[0]["reasoning"]
    assert "RSI14 needs fifteen sessions" in flux[0]["reasoning"]
    assert "SMA20" not in flux[0]["support"]


def test_prices_reward_the_rule(records, prices):
    """Next-day adjusted return after the rule says long beats the return after it says short."""
    by_side = defaultdict(list)
    for record in records:
        bars = prices[record["ticker"]]
        i = next(k for k, b in enumerate(bars) if b["date"] == record["as_of_date"])
        side = score_to_action(independent_score(bars, i))
        nxt = bars[i + 1]["adj_close"] / bars[i]["adj_close"] - 1
        by_side["long" if "BUY" in side else "short" if "SELL" in side else "flat"].append(nxt)
    mean = {k: sum(v) / len(v) for k, v in by_side.items()}
    # edge_bps = 20 per unit of position, daily volatility 1-2%: a visible but modest edge
    assert mean["long"] > 0.001 > -0.001 > mean["short"]
    assert mean["long"] - mean["short"] > 0.003


def test_manifest_predicts_the_parse(sample_manifest):
    result = parse_files(sorted((SAMPLES / "xml").glob("*.xml")))
    report = result.report("x")
    expected = sample_manifest["expected_parse"]
    assert report["totals"]["records"] == expected["records"]
    assert report["reject_reasons"] == expected["rejects"]
    assert report["totals"]["duplicates_collapsed"] == expected["duplicates_collapsed"]
    assert report["totals"]["theses_seen"] == sample_manifest["theses_written"]


def test_charlie_sample_takes_more_than_20_tickers(tmp_path):
    out = tmp_path / "wide"
    argv = ["sample", "--params", str(REPO / "params.yaml"), "--out-dir", str(out),
            "--tickers", "22", "--start", "2024-01-02", "--end", "2024-01-12"]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.stem for p in (out / "xml").glob("*.xml")) == sorted(ticker_names(22))
    assert (out / "prices" / "BOLT2.csv").is_file()
