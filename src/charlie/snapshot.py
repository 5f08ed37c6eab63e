"""Point-in-time market snapshots: the text a prompt is made of.

For each record, a compact block describing the market as of the close of its date, from
bars dated on or before it only. Indicators are computed once per ticker with vectorised
pandas (never by rescanning a ticker's history per record), on adjusted closes with levels in
today's raw terms, following the conventions of :mod:`charlie.indicators`; every number has
its conventional reading beside it. Missing history is said, never filled in.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from charlie.indicators import (
    RSI_WINDOW,
    SMA_WINDOW,
    VOLATILITY_WINDOW,
    VOLUME_WINDOW,
    rsi_reading,
    volatility_reading,
    volume_reading,
)

YEAR_WINDOW = 252  # sessions in the 52-week range
EMA_SPAN = 20
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _wilder(values: pd.Series, n: int) -> pd.Series:
    """Wilder's smoothing seeded with the simple mean of the first ``n`` values."""
    out = pd.Series(np.nan, index=values.index)
    if len(values) < n:
        return out
    seeded = values.iloc[n - 1 :].copy()
    seeded.iloc[0] = values.iloc[:n].mean()
    out.iloc[n - 1 :] = seeded.ewm(alpha=1 / n, adjust=False).mean().to_numpy()
    return out


def _ema(values: pd.Series, span: int) -> pd.Series:
    """EMA seeded with the SMA of the first ``span`` values (the charting convention)."""
    out = pd.Series(np.nan, index=values.index)
    if len(values) < span:
        return out
    seeded = values.iloc[span - 1 :].copy()
    seeded.iloc[0] = values.iloc[:span].mean()
    out.iloc[span - 1 :] = seeded.ewm(span=span, adjust=False).mean().to_numpy()
    return out


def indicator_frame(bars: pd.DataFrame) -> pd.DataFrame:
    """All snapshot indicators for one ticker's bars (DESIGN.md columns), one row per bar.

    Every column at row t depends on rows 0..t only: rolling windows, and recursive
    averages run forwards.
    """
    adj = bars["adj_close"].astype("float64")
    close = bars["close"].astype("float64")
    to_raw = close / adj  # quotes an adjusted level in today's raw terms
    basis = adj / close
    change = adj.diff()
    gains = change.clip(lower=0).iloc[1:]
    losses = (-change).clip(lower=0).iloc[1:]
    avg_gain = _wilder(gains, RSI_WINDOW).reindex(bars.index)
    avg_loss = _wilder(losses, RSI_WINDOW).reindex(bars.index)
    rs = avg_gain / avg_loss
    rsi = (100 - 100 / (1 + rs)).where(avg_loss != 0, 100.0).where(avg_gain.notna())
    volume = bars["volume"].astype("float64")
    return pd.DataFrame(
        {
            "date": bars["date"].to_numpy(),
            "open": bars["open"].to_numpy(),
            "high": bars["high"].to_numpy(),
            "low": bars["low"].to_numpy(),
            "close": close.to_numpy(),
            "volume": volume.to_numpy(),
            "sessions": np.arange(1, len(bars) + 1),
            "ret1": adj.pct_change(1, fill_method=None),
            "ret5": adj.pct_change(5, fill_method=None),
            "ret20": adj.pct_change(20, fill_method=None),
            "sma20": adj.rolling(SMA_WINDOW).mean() * to_raw,
            "ema20": _ema(adj, EMA_SPAN) * to_raw,
            "rsi14": rsi,
            "volatility20": adj.pct_change(fill_method=None).rolling(VOLATILITY_WINDOW).std()
            * math.sqrt(252),
            "volume_ratio": volume / volume.rolling(VOLUME_WINDOW).mean(),
            "high52": (bars["high"] * basis).rolling(YEAR_WINDOW).max() * to_raw,
            "low52": (bars["low"] * basis).rolling(YEAR_WINDOW).min() * to_raw,
        }
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The prompt text for one record and the date of the bar it was computed from."""

    text: str
    bar_date: dt.date | None


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def _distance(close: float, level: float) -> str:
    gap = close / level - 1
    return f"{abs(gap) * 100:.1f}% {'above' if gap >= 0 else 'below'}"


def _trend_word(close: float, sma: float) -> str:
    return "uptrend" if close >= 1.01 * sma else "downtrend" if close <= 0.99 * sma else "flat"


def render(ticker: str, as_of: dt.date, row: dict | None, bar_date: dt.date | None) -> str:
    """The snapshot text for one record from its indicator row (None: no bar at all)."""
    lines = [
        f"Market snapshot for {ticker} as of the close of {as_of} ({_WEEKDAYS[as_of.weekday()]})."
    ]
    if row is None:
        lines.append(f"No price history is available for {ticker} on or before {as_of}.")
        return "\n".join(lines)
    n = int(row["sessions"])
    if bar_date != as_of:
        lines.append(
            f"No bar on {as_of} (market closed or data missing); figures are from the last "
            f"bar before it, {bar_date}."
        )
    lines.append(
        f"Bar: open {row['open']:.2f}, high {row['high']:.2f}, low {row['low']:.2f}, "
        f"close {row['close']:.2f}, volume {row['volume']:,.0f}."
    )
    rets = [f"{h}-day {_pct(row[f'ret{h}'])}" for h in (1, 5, 20) if not math.isnan(row[f"ret{h}"])]
    history = f"{n} session{'s' if n > 1 else ''} of history"
    lines.append("Returns: " + (", ".join(rets) if rets else f"not available ({history})") + ".")
    close = row["close"]
    if math.isnan(row["sma20"]):
        lines.append(
            f"Trend: SMA20 and EMA20 not available (need {SMA_WINDOW} sessions; {history})."
        )
    else:
        lines.append(
            f"Trend: close {_distance(close, row['sma20'])} SMA20 {row['sma20']:.2f} "
            f"({_trend_word(close, row['sma20'])}), {_distance(close, row['ema20'])} "
            f"EMA20 {row['ema20']:.2f}."
        )
    if math.isnan(row["rsi14"]):
        lines.append(f"Momentum: RSI14 not available (needs {RSI_WINDOW + 1} sessions; {history}).")
    else:
        lines.append(f"Momentum: RSI14 {row['rsi14']:.1f} ({rsi_reading(row['rsi14'])}).")
    if math.isnan(row["volatility20"]):
        lines.append(f"Volatility: 20-day not available ({history}).")
    else:
        vol = row["volatility20"]
        lines.append(f"Volatility: 20-day {vol * 100:.1f}% annualised ({volatility_reading(vol)}).")
    if math.isnan(row["volume_ratio"]):
        lines.append(f"Volume: 20-day average not available ({history}).")
    else:
        ratio = row["volume_ratio"]
        lines.append(f"Volume: {ratio:.2f}x its 20-day average ({volume_reading(ratio)}).")
    if math.isnan(row["high52"]):
        lines.append(f"52-week range: not available (need {YEAR_WINDOW} sessions; {history}).")
    else:
        lines.append(
            f"52-week range: close {_distance(close, row['high52'])} the high "
            f"{row['high52']:.2f} and {_distance(close, row['low52'])} the low {row['low52']:.2f}."
        )
    return "\n".join(lines)


def snapshots_for_ticker(ticker: str, bars: pd.DataFrame, dates: list[dt.date]) -> list[Snapshot]:
    """Snapshots for many record dates of one ticker, from one pass over its bars.

    Each date uses the last bar dated on or before it (found by binary search), so a record
    never sees a later bar.
    """
    frame = indicator_frame(bars)
    bar_days = frame["date"].to_numpy(dtype="datetime64[D]")
    columns = {c: frame[c].to_numpy() for c in frame.columns if c != "date"}
    wanted = np.array(dates, dtype="datetime64[D]")
    positions = np.searchsorted(bar_days, wanted, side="right") - 1
    out = []
    for as_of, pos in zip(dates, positions.tolist(), strict=True):
        if pos < 0:
            out.append(Snapshot(render(ticker, as_of, None, None), None))
            continue
        row = {c: values[pos] for c, values in columns.items()}
        bar_date = bar_days[pos].astype(dt.date)
        out.append(Snapshot(render(ticker, as_of, row, bar_date), bar_date))
    return out
