"""A deterministic synthetic corpus: theses in the seed's XML format plus daily OHLCV prices.

The corpus is built so that learning pays: each thesis cites point-in-time indicators of its
ticker's prices, its action follows a fixed rule of those indicators (with some label noise),
and the next day's return drifts in the rule's direction. A model that learns the rule from
the market snapshot beats the baselines; a model that does not, does not.

The action rule, for the thesis on day t, from bars dated on or before t (raw close, volume;
see :mod:`charlie.indicators` for the indicator conventions):

========  ===========================================================================
trend     +1 if close >= 1.01 x SMA20 (uptrend), -1 if <= 0.99 x SMA20 (downtrend), else 0
momentum  +1 if the 5-day return >= +2% (rising), -1 if <= -2% (falling), else 0
RSI       -1 if RSI14 >= 70 (overbought), +1 if RSI14 <= 30 (oversold), else 0
volume    the sign of the day's return if volume >= 1.5 x its 20-day average (heavy), else 0
========  ===========================================================================

The words in brackets are the readings the market snapshot prints beside each number, so the
prompt states every input of the rule; the model has to learn which readings count, and how.
An indicator without enough history counts 0. The score is the sum: >= 2 STRONG_BUY, 1 BUY,
0 HOLD, -1 SELL, <= -2 STRONG_SELL (roughly a fifth of theses each, HOLD a little rarer). With
probability ``label_noise`` the written action is moved one notch up or down (clamped), as a
human analyst's judgement would wander.

The edge: day t+1's total return is ``edge_bps`` x position + noise, where position is the
rule's (noise-free) action at t: STRONG_BUY +2, BUY +1, HOLD 0, SELL -1, STRONG_SELL -2. The
overnight gap carries no drift, so a trade decided at t's close and filled at t+1's open
captures the whole edge. Quarterly dividends make ``adj_close`` differ from ``close``.

A small share of theses (``dirty_rate``) carries a defect the parser must reject or collapse,
as real corpora do: action ``error``, an unknown action, an empty reasoning, a missing action,
an impossible date, an exact duplicate or a conflicting duplicate. Action spellings and date
formats vary on purpose (``Strong Buy``, ``01/08/2024``), and some reasoning sits in CDATA.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from xml.sax.saxutils import escape, quoteattr

from charlie import ACTIONS
from charlie.calendar import shift_trading_days, trading_days
from charlie.indicators import (
    RollingIndicators,
    Snapshot,
    move_reading,
    rsi_reading,
    trend_reading,
    volume_reading,
)

TICKER_NAMES = (
    "ACME", "BOLT", "CRUX", "DYNA", "EONX", "FLUX", "GRIT", "HALO", "IRIS", "JOLT",
    "KITE", "LUMA", "MOXY", "NOVA", "ONYX", "PIXL", "QUBE", "RUNE", "SOLR", "TIDE",
)  # fmt: skip
"""The first names; past them come numbered rounds of the same (see :func:`ticker_names`)."""
SECTORS = ("software", "semiconductors", "industrials", "consumer staples", "biotech",
           "energy", "payments", "logistics", "media", "utilities")  # fmt: skip
POSITION = {"STRONG_BUY": 2, "BUY": 1, "HOLD": 0, "SELL": -1, "STRONG_SELL": -2}
# Log-normal spread of daily volume around its level: 0.5 makes about 15% of days heavy
# (>= 1.5x the 20-day average; 6% at 0.25), enough for a small model to learn the volume signal.
VOLUME_NOISE = 0.5
WARMUP_SESSIONS = 260  # a year of history before the first thesis (52-week high/low)
TAIL_SESSIONS = 45  # prices after the last thesis, so 30-day forward returns exist
GENERATED_BY = "charlie-sample"
FORMAT_VERSION = "1.0"

DEFECTS = {  # defect -> (weight, the parser's reject reason or "duplicate_collapsed")
    "action_error": (40, "action_error"),
    "unknown_action": (8, "unknown_action"),
    "empty_reasoning": (10, "missing_reasoning"),
    "missing_action": (8, "missing_action"),
    "impossible_date": (8, "invalid_date"),
    "exact_duplicate": (16, "duplicate_collapsed"),
    "conflicting_duplicate": (10, "conflicting_duplicate"),
}
_SPELLINGS = {
    "STRONG_BUY": ("strong_buy", "Strong Buy", "strong-buy", "STRONG BUY"),
    "BUY": ("buy", "buy", "Buy", " BUY "),
    "HOLD": ("hold", "hold", "Hold", "HOLD"),
    "SELL": ("sell", "sell", "Sell", " SELL "),
    "STRONG_SELL": ("strong_sell", "Strong Sell", "strong-sell", "STRONG_SELL"),
}


@dataclass(frozen=True, slots=True)
class Bar:
    """One daily OHLCV bar in the DESIGN.md price-file format."""

    date: dt.date
    open: float
    high: float
    low: float
    close: float
    adj_close: float
    volume: int


@dataclass(frozen=True, slots=True)
class Thesis:
    """One generated thesis before rendering, with the truth the tests check against."""

    date: dt.date
    rule_action: str
    action: str
    score: int
    reasoning: str
    support: str
    defect: str | None = None


@dataclass
class TickerSample:
    """Everything generated for one ticker."""

    ticker: str
    sector: str
    bars: list[Bar]
    theses: list[Thesis]
    listed: dt.date


@dataclass
class SampleSpec:
    """What to generate; mirrors ``SampleParams`` without depending on the config layer."""

    seed: int = 7
    tickers: int = 6
    start: dt.date = dt.date(2023, 10, 24)
    end: dt.date = dt.date(2025, 4, 24)
    detail: str = "compact"
    ipo_ticker: bool = True
    edge_bps: float = 20.0
    label_noise: float = 0.1
    dirty_rate: float = 0.02
    names: Sequence[str] = field(default=TICKER_NAMES)


# ----------------------------------------------------------------------------- the rule


def rule_components(snap: Snapshot) -> dict[str, int]:
    """The four signed components of the action rule (0 where history is missing).

    Each is read off the word the snapshot prints beside its number (:mod:`charlie.indicators`'
    readings), so the prompt states every input of the rule.
    """
    trend = momentum = rsi = volume = 0
    if snap.sma20 is not None:
        trend = {"uptrend": 1, "downtrend": -1}.get(trend_reading(snap.close, snap.sma20), 0)
    if snap.ret5 is not None:
        momentum = {"rising": 1, "falling": -1}.get(move_reading(snap.ret5), 0)
    if snap.rsi14 is not None:
        rsi = {"overbought": -1, "oversold": 1}.get(rsi_reading(snap.rsi14), 0)
    if snap.volume_ratio is not None and snap.ret1 is not None:
        volume = {"heavy buying": 1, "heavy selling": -1}.get(
            volume_reading(snap.volume_ratio, snap.ret1), 0
        )
    return {"trend": trend, "momentum": momentum, "rsi": rsi, "volume": volume}


def score_to_action(score: int) -> str:
    """Map the rule's score to an action label."""
    if score >= 2:
        return "STRONG_BUY"
    if score == 1:
        return "BUY"
    if score == 0:
        return "HOLD"
    if score == -1:
        return "SELL"
    return "STRONG_SELL"


# ------------------------------------------------------------------------ generation


def generate(spec: SampleSpec) -> list[TickerSample]:
    """Generate prices and theses for ``spec.tickers`` tickers, deterministically.

    Each ticker has its own random stream seeded from ``(seed, ticker)``, so adding tickers
    leaves the others unchanged.
    """
    return list(iter_generate(spec))


def ticker_names(count: int, names: Sequence[str] = TICKER_NAMES) -> list[str]:
    """The first ``count`` ticker names: ``names`` in order, then numbered rounds of them.

    ``ACME ... TIDE``, then ``ACME2 ... TIDE2``, ``ACME3`` and so on (a name already taken is
    skipped), so any count gets distinct, valid tickers and a larger count only appends: the
    first names, and so their data, stay what they were.
    """
    if not names:
        raise ValueError("no ticker names to start from")
    first = list(dict.fromkeys(names))
    numbered = (f"{name}{n}" for n in itertools.count(2) for name in first)
    taken = set(first)
    out = first[:count]
    while len(out) < count:
        name = next(numbered)
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def iter_generate(spec: SampleSpec) -> Iterator[TickerSample]:
    """:func:`generate`, one ticker at a time (for progress reporting)."""
    thesis_days = trading_days(spec.start, spec.end)
    if not thesis_days:
        raise ValueError(f"no trading day between {spec.start} and {spec.end}")
    first_price = shift_trading_days(thesis_days[0], -WARMUP_SESSIONS)
    last_price = shift_trading_days(thesis_days[-1], TAIL_SESSIONS)
    for index, ticker in enumerate(ticker_names(spec.tickers, spec.names)):
        rng = random.Random(f"{spec.seed}:{ticker}")
        listed = first_price
        if spec.ipo_ticker and spec.tickers > 1 and index == spec.tickers - 1:
            listed = thesis_days[int(len(thesis_days) * 0.4)]
        days = trading_days(listed, last_price)
        yield _generate_ticker(ticker, days, set(thesis_days), spec, rng, listed)


def _generate_ticker(
    ticker: str,
    days: list[dt.date],
    thesis_days: set[dt.date],
    spec: SampleSpec,
    rng: random.Random,
    listed: dt.date,
) -> TickerSample:
    sigma = rng.uniform(0.010, 0.020)
    price = rng.uniform(20.0, 300.0)
    base_volume = rng.uniform(2e5, 5e6)
    quarterly_yield = rng.choice((0.0, 0.0, 0.003, 0.005, 0.008))
    sector = rng.choice(SECTORS)
    edge = spec.edge_bps / 1e4

    indicators = RollingIndicators()
    raw: list[tuple[dt.date, float, float, float, float, int, float]] = []
    theses: list[Thesis] = []
    position = 0
    adj_index = price
    prev_close = price
    seen_months: set[tuple[int, int]] = set()
    for i, day in enumerate(days):
        dividend = 0.0
        month_key = (day.year, day.month)
        if (
            i > 0
            and quarterly_yield
            and day.month in (2, 5, 8, 11)
            and day.day >= 10
            and month_key not in seen_months
        ):
            seen_months.add(month_key)
            dividend = round(prev_close * quarterly_yield, 2)
        if i == 0:
            total = 0.0
            open_ = prev_close
        else:
            shock = rng.gauss(0.0, 1.0) * (2.5 if rng.random() < 0.03 else 1.0)
            total = edge * position + sigma * shock
            open_ = prev_close * (1.0 + 0.3 * sigma * rng.gauss(0.0, 1.0)) - dividend
        close = max(prev_close * (1.0 + total) - dividend, 0.5)
        spread = 0.4 * sigma
        high = max(open_, close) * (1.0 + abs(rng.gauss(0.0, spread)))
        low = min(open_, close) * (1.0 - abs(rng.gauss(0.0, spread)))
        volume = int(base_volume * math.exp(VOLUME_NOISE * rng.gauss(0.0, 1.0) + 12.0 * abs(total)))
        open_, high, low, close = (round(x, 4) for x in (open_, high, low, close))
        raw.append((day, open_, high, low, close, volume, dividend))

        # Indicators run on the adjusted basis (see charlie.indicators): an index that moves
        # like the final adj_close will, quoted back in today's raw terms.
        if i:
            adj_index *= close / (raw[-2][4] - dividend)
        else:
            adj_index = close
        basis = adj_index / close
        snap = indicators.update(adj_index, high * basis, low * basis, volume)
        snap = replace(snap.rescaled(1 / basis), close=close)  # the exact raw close
        components = rule_components(snap)
        score = sum(components.values())
        rule_action = score_to_action(score)
        position = POSITION[rule_action]
        if day in thesis_days:
            action = rule_action
            if rng.random() < spec.label_noise:
                index = ACTIONS.index(action) + rng.choice((-1, 1))
                action = ACTIONS[min(max(index, 0), len(ACTIONS) - 1)]
            defect = _pick_defect(rng) if rng.random() < spec.dirty_rate else None
            theses.append(
                Thesis(
                    date=day,
                    rule_action=rule_action,
                    action=action,
                    score=score,
                    reasoning=_reasoning(ticker, sector, day, snap, components, action, spec, rng),
                    support=_support(snap, components, spec.detail),
                    defect=defect,
                )
            )
        prev_close = close

    return TickerSample(ticker, sector, _adjust(raw), theses, listed)


def _pick_defect(rng: random.Random) -> str:
    kinds = list(DEFECTS)
    return rng.choices(kinds, weights=[DEFECTS[k][0] for k in kinds])[0]


def _adjust(raw: list[tuple[dt.date, float, float, float, float, int, float]]) -> list[Bar]:
    """Backward-adjust closes for dividends (the CRSP/Yahoo convention)."""
    factor = 1.0
    bars: list[Bar] = []
    for i in range(len(raw) - 1, -1, -1):
        day, open_, high, low, close, volume, _ = raw[i]
        bars.append(Bar(day, open_, high, low, close, round(close * factor, 4), volume))
        dividend = raw[i][6]
        if dividend and i > 0:
            factor *= 1.0 - dividend / raw[i - 1][4]
    bars.reverse()
    return bars


# ----------------------------------------------------------------------------- text


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def _action_phrase(action: str, rng: random.Random) -> str:
    return rng.choice(
        {
            "STRONG_BUY": ("a STRONG BUY", "a high-conviction long (STRONG BUY)"),
            "BUY": ("a BUY", "a measured long position (BUY)"),
            "HOLD": ("a HOLD", "standing aside for now (HOLD)"),
            "SELL": ("a SELL", "reducing exposure (SELL)"),
            "STRONG_SELL": ("a STRONG SELL", "a high-conviction exit or short (STRONG SELL)"),
        }[action]
    )


def _reasoning(
    ticker: str,
    sector: str,
    day: dt.date,
    snap: Snapshot,
    components: dict[str, int],
    action: str,
    spec: SampleSpec,
    rng: random.Random,
) -> str:
    """The call first (the four signals with a running score, the net, the action), then the
    figures behind it.

    Compact: one sentence of figures with their readings; full adds the analysis paragraphs.
    """
    # A scorecard with the running score after each signal: the call is a sum, and writing
    # it out one step at a time is how an analyst (and a small model) gets it right.
    named = {"trend": "trend", "momentum": "momentum", "rsi": "RSI", "volume": "volume"}
    card, running = [], 0
    for key, value in components.items():
        running += value
        word = "positive" if value > 0 else "negative" if value < 0 else "neutral"
        card.append(f"{named[key]} {word} ({running:+d})")
    parts = [
        f"Scorecard: {', '.join(card)}; net {running:+d}, which argues for "
        f"{_action_phrase(action, rng)}."
    ]
    figures = [f"{ticker} closed at {snap.close:.2f} on {day.isoformat()}"]
    if snap.sma20 is None:
        sessions = f"{snap.sessions} session{'s' if snap.sessions > 1 else ''}"
        figures.append(f"with only {sessions} of history the 20-day SMA is not available yet")
    else:
        gap = snap.close / snap.sma20 - 1.0
        figures.append(
            f"{abs(gap) * 100:.1f}% {'above' if gap >= 0 else 'below'} its 20-day SMA "
            f"({trend_reading(snap.close, snap.sma20)})"
        )
    if snap.ret5 is not None:
        figures.append(f"{_pct(snap.ret5)} over five sessions ({move_reading(snap.ret5)})")
    if snap.rsi14 is None:
        figures.append("RSI14 needs fifteen sessions and is not available yet")
    else:
        figures.append(f"RSI14 {snap.rsi14:.1f} ({rsi_reading(snap.rsi14)})")
    if snap.volume_ratio is not None:
        figures.append(
            f"volume {snap.volume_ratio:.2f}× its 20-day average "
            f"({volume_reading(snap.volume_ratio, snap.ret1)})"
        )
    parts.append(", ".join(figures) + ".")
    if spec.detail == "full":
        parts.extend(_full_paragraphs(ticker, sector, snap, rng))
    return " ".join(parts)


def _full_paragraphs(ticker: str, sector: str, snap: Snapshot, rng: random.Random) -> list[str]:
    """Longer analysis for the benchmark corpus (≈ 2.4 kB per thesis in all)."""
    out = []
    if snap.high20 is not None and snap.low20 is not None and snap.high20 > snap.low20:
        where = (snap.close - snap.low20) / (snap.high20 - snap.low20)
        out.append(
            f"Over the last twenty sessions {ticker} traded between {snap.low20:.2f} and "
            f"{snap.high20:.2f}, and the close sits at {where * 100:.0f}% of that range. "
            + rng.choice(
                (
                    "Closes near the top of a range tend to attract momentum buyers, while "
                    "closes near the bottom often see forced selling before value buyers step in.",
                    "Where a stock closes within its recent range says more than the level "
                    "itself: it shows who was in control into the bell.",
                )
            )
        )
    if snap.volatility20 is not None:
        daily = snap.volatility20 / math.sqrt(252)
        out.append(
            f"Realised volatility over twenty sessions is {snap.volatility20 * 100:.1f}% "
            f"annualised, a typical daily move of about {daily * 100:.1f}% or "
            f"{snap.close * daily:.2f} per share. "
            + rng.choice(
                (
                    "Position size should respect that range: a one-sigma day against us "
                    "must be a loss we can carry without changing the plan.",
                    "That noise level decides how far a stop must sit to avoid being "
                    "shaken out by an ordinary session.",
                )
            )
        )
        stop = (snap.sma20 or snap.close) - snap.close * daily
        up = snap.close * (1 + 2 * daily * math.sqrt(5))
        down = snap.close * (1 - 2 * daily * math.sqrt(5))
        out.append(
            f"Risk framing: a close below {stop:.2f} would weaken the technical picture. "
            f"A two-sigma week spans roughly {down:.2f} to {up:.2f}, which brackets the "
            "scenarios worth planning for; anything outside it would be news-driven rather "
            "than a continuation of the current tape."
        )
    if snap.ret5 is not None and snap.ret20 is not None:
        pace = snap.ret5 / 5 - snap.ret20 / 20
        out.append(
            f"Momentum detail: the five-session return of {_pct(snap.ret5)} compares with "
            f"{_pct(snap.ret20)} over twenty sessions, so the recent pace is "
            f"{'faster' if pace > 0 else 'slower'} than the month's average by about "
            f"{abs(pace) * 100:.2f}% a day. "
            + rng.choice(
                (
                    "Accelerating moves tend to persist for a few sessions before they fade; "
                    "decelerating ones often precede a pause or a reversal.",
                    "A change of pace matters more than its level: it is often the first sign "
                    "that the balance between buyers and sellers is shifting.",
                )
            )
        )
    out.append(
        rng.choice(
            (
                "What would change the view: a decisive close through the 20-day average "
                "against the position, a reversal of the five-day momentum, or a volume spike "
                "on a move against us. Any one of these would prompt a review; two together "
                "would end the trade regardless of the remaining signals.",
                "Invalidation: the thesis rests on the trend, momentum, RSI and volume readings "
                "above. If two of them flip sign over the next sessions, the position should be "
                "cut back, and a new assessment made from the fresh data rather than defended.",
            )
        )
    )
    out.append(
        rng.choice(
            (
                f"Sector context: {sector} names have traded on rates and earnings revisions "
                "in recent weeks; nothing in the tape suggests a sector-wide dislocation, so "
                f"{ticker}'s own price action should dominate the next few sessions.",
                f"As a {sector} company, {ticker} is exposed to the group's flows, but its "
                "recent behaviour has been idiosyncratic enough that the stock-level signals "
                "deserve more weight than the sector backdrop.",
                f"The {sector} group has been mixed; peers have not moved in step with "
                f"{ticker}, which keeps the focus on the stock's own trend and momentum.",
            )
        )
    )
    out.append(
        rng.choice(
            (
                "Execution: orders are placed after the close and filled at the next open, so "
                "the overnight gap is part of the risk. Liquidity is ample at the stated "
                "volume, and slippage should stay within normal costs for a position of this "
                "size. The view is reviewed every session as new bars arrive.",
                "Process note: this assessment uses only information available at the close; "
                "no later prices inform it. It will be revisited after the next session, and "
                "the position will be resized if the signals change materially or if "
                "volatility expands beyond its recent range.",
            )
        )
    )
    return out


def _support(snap: Snapshot, components: dict[str, int], detail: str) -> str:
    """One line per signal with its reading and figure, then the net."""
    lines = []
    if snap.sma20 is not None:
        lines.append(
            f"- Trend: {trend_reading(snap.close, snap.sma20)} "
            f"(close {_pct(snap.close / snap.sma20 - 1)} vs SMA20)"
        )
    if snap.ret5 is not None:
        lines.append(f"- Momentum: {move_reading(snap.ret5)} (5d {_pct(snap.ret5)})")
    if snap.rsi14 is not None:
        lines.append(f"- RSI14: {rsi_reading(snap.rsi14)} ({snap.rsi14:.1f})")
    if snap.volume_ratio is not None:
        lines.append(
            f"- Volume: {volume_reading(snap.volume_ratio, snap.ret1)} "
            f"({snap.volume_ratio:.2f}× average)"
        )
    if detail == "full":
        rets = [
            f"{label} {_pct(value)}"
            for label, value in (("1d", snap.ret1), ("20d", snap.ret20))
            if value is not None
        ]
        if rets:
            lines.append("- Returns " + ", ".join(rets))
        if snap.volatility20 is not None:
            lines.append(f"- Volatility20 {snap.volatility20 * 100:.1f}% annualised")
    lines.append(f"- Net signal {sum(components.values()):+d}")
    return "\n".join(lines)


# ------------------------------------------------------------------------ rendering

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")  # fmt: skip


def _date_text(day: dt.date, rng: random.Random) -> str:
    """Mostly ISO dates; the rest in the other formats the parser accepts."""
    style = rng.random()
    if style < 0.88:
        return day.isoformat()
    if style < 0.91:
        return f"{day.year}/{day.month:02d}/{day.day:02d}"
    if style < 0.94:
        return f"{day.month:02d}/{day.day:02d}/{day.year}"
    if style < 0.97:
        return f"{_MONTHS[day.month - 1]} {day.day}, {day.year}"
    return f"{day.isoformat()}T16:00:00-05:00"


def _thesis_xml(
    date_text: str, reasoning: str, action: str | None, support: str, cdata: bool
) -> str:
    body = f"<![CDATA[{reasoning}]]>" if cdata and "]]>" not in reasoning else escape(reasoning)
    lines = [
        "  <thesis>",
        f"    <as-of-date>{escape(date_text)}</as-of-date>",
        f"    <reasoning>{body}</reasoning>",
    ]
    if action is not None:
        lines.append(f"    <action>{escape(action)}</action>")
    lines.append(f"    <support>{escape(support)}</support>")
    lines.append("  </thesis>")
    return "\n".join(lines)


def render_xml(sample: TickerSample, seed: int) -> str:
    """Render one ticker's theses in the seed's XML format, defects included."""
    rng = random.Random(f"{seed}:{sample.ticker}:render")
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f"<stock-theses ticker={quoteattr(sample.ticker)} generated-by={quoteattr(GENERATED_BY)} "
        f"version={quoteattr(FORMAT_VERSION)}>",
    ]
    for thesis in sample.theses:
        date_text = _date_text(thesis.date, rng)
        action: str | None = rng.choice(_SPELLINGS[thesis.action])
        reasoning = thesis.reasoning
        cdata = rng.random() < 0.05
        match thesis.defect:
            case "action_error":
                action, reasoning = "error", "ERROR: upstream generation failed (timeout)."
            case "unknown_action":
                action = rng.choice(("accumulate", "outperform", "n/a"))
            case "empty_reasoning":
                reasoning = "   "
            case "missing_action":
                action = None
            case "impossible_date":
                date_text = f"{thesis.date.year}-{thesis.date.month:02d}-32"
        xml = _thesis_xml(date_text, reasoning, action, thesis.support, cdata)
        out.append(xml)
        if thesis.defect == "exact_duplicate":
            out.append(xml)
        elif thesis.defect == "conflicting_duplicate":
            other = ACTIONS[(ACTIONS.index(thesis.action) + 2) % len(ACTIONS)]
            out.append(_thesis_xml(date_text, reasoning, other.lower(), thesis.support, cdata))
    out.append("</stock-theses>")
    return "\n".join(out) + "\n"


def render_prices_csv(sample: TickerSample) -> str:
    """Render one ticker's bars as ``date,open,high,low,close,adj_close,volume``."""
    rows = ["date,open,high,low,close,adj_close,volume"]
    rows.extend(
        f"{b.date.isoformat()},{b.open:.4f},{b.high:.4f},{b.low:.4f},{b.close:.4f},"
        f"{b.adj_close:.4f},{b.volume}"
        for b in sample.bars
    )
    return "\n".join(rows) + "\n"


def manifest(samples: list[TickerSample], spec: SampleSpec) -> dict:
    """What was generated, and what a correct parse of it must report."""
    expected_rejects: Counter[str] = Counter()
    collapsed = 0
    written = 0
    for sample in samples:
        for thesis in sample.theses:
            written += 1
            if thesis.defect is None:
                continue
            reason = DEFECTS[thesis.defect][1]
            if reason == "duplicate_collapsed":
                collapsed += 1
                written += 1
            elif reason == "conflicting_duplicate":
                expected_rejects[reason] += 2
                written += 1
            else:
                expected_rejects[reason] += 1
    theses = [t for s in samples for t in s.theses]
    return {
        "generated_by": GENERATED_BY,
        "spec": {
            "seed": spec.seed,
            "tickers": spec.tickers,
            "start": spec.start.isoformat(),
            "end": spec.end.isoformat(),
            "detail": spec.detail,
            "ipo_ticker": spec.ipo_ticker,
            "edge_bps": spec.edge_bps,
            "label_noise": spec.label_noise,
            "dirty_rate": spec.dirty_rate,
        },
        "tickers": {
            s.ticker: {
                "sector": s.sector,
                "listed": s.listed.isoformat(),
                "theses": len(s.theses),
                "bars": len(s.bars),
                "first_bar": s.bars[0].date.isoformat(),
                "last_bar": s.bars[-1].date.isoformat(),
            }
            for s in samples
        },
        "theses_written": written,
        "expected_parse": {
            "records": sum(t.defect in (None, "exact_duplicate") for t in theses),
            "rejects": dict(sorted(expected_rejects.items())),
            "duplicates_collapsed": collapsed,
        },
        "rule_actions": dict(sorted(Counter(t.rule_action for t in theses).items())),
        "written_actions": dict(sorted(Counter(t.action for t in theses).items())),
        "label_agreement": round(
            sum(t.action == t.rule_action for t in theses) / max(len(theses), 1), 4
        ),
    }


def manifest_json(samples: list[TickerSample], spec: SampleSpec) -> str:
    """The manifest as stable, human-readable JSON."""
    return json.dumps(manifest(samples, spec), indent=2, sort_keys=False) + "\n"
