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
from numpy.lib.stride_tricks import sliding_window_view

from charlie.indicators import (
    RSI_WINDOW,
    SMA_WINDOW,
    VOLATILITY_WINDOW,
    VOLUME_WINDOW,
    move_reading,
    rsi_reading,
    trend_reading,
    volatility_reading,
    volume_reading,
)

YEAR_WINDOW = 252  # sessions in the 52-week range
EMA_SPAN = 20
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _recursive(values: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """An exponential average seeded with the simple mean of the first ``n`` values.

    ``alpha`` = 1/n is Wilder's smoothing (RSI), 2/(n+1) the charting EMA. The recursion is a
    plain loop: a few hundred steps per ticker, cheaper than building pandas objects for it.
    """
    out = np.full(len(values), np.nan)
    if len(values) < n:
        return out
    avg = float(values[:n].mean())
    out[n - 1] = avg
    keep = 1.0 - alpha
    for i, x in enumerate(values[n:].tolist(), start=n):
        avg = avg * keep + x * alpha
        out[i] = avg
    return out


def _shifted_ratio(x: np.ndarray, h: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    if len(x) > h:
        out[h:] = x[h:] / x[:-h] - 1.0
    return out


def _rolling(x: np.ndarray, n: int, reduce: str) -> np.ndarray:
    out = np.full(len(x), np.nan)
    if len(x) >= n:
        out[n - 1 :] = getattr(sliding_window_view(x, n), reduce)(axis=1)
    return out


def indicator_frame(bars: pd.DataFrame) -> pd.DataFrame:
    """All snapshot indicators for one ticker's bars (DESIGN.md columns), one row per bar.

    Every value at row t depends on rows 0..t only: trailing windows, and recursive averages
    run forwards. Vectorised with numpy over the whole history, once per ticker.
    """
    adj = bars["adj_close"].to_numpy(dtype="float64")
    close = bars["close"].to_numpy(dtype="float64")
    high = bars["high"].to_numpy(dtype="float64")
    low = bars["low"].to_numpy(dtype="float64")
    volume = bars["volume"].to_numpy(dtype="float64")
    to_raw = close / adj  # quotes an adjusted level in today's raw terms
    change = np.diff(adj)
    avg_gain = np.concatenate(
        ([np.nan], _recursive(np.clip(change, 0, None), RSI_WINDOW, 1 / RSI_WINDOW))
    )
    avg_loss = np.concatenate(
        ([np.nan], _recursive(np.clip(-change, 0, None), RSI_WINDOW, 1 / RSI_WINDOW))
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        rsi = np.where(avg_loss == 0, 100.0, 100.0 - 100.0 / (1.0 + avg_gain / avg_loss))
    rsi[np.isnan(avg_gain)] = np.nan
    returns = np.concatenate(([np.nan], change / adj[:-1]))
    volatility = np.full(len(adj), np.nan)
    if len(adj) > VOLATILITY_WINDOW:
        window = sliding_window_view(returns[1:], VOLATILITY_WINDOW)
        volatility[VOLATILITY_WINDOW:] = window.std(axis=1, ddof=1) * math.sqrt(252)
    basis = adj / close
    return pd.DataFrame(
        {
            "date": bars["date"].to_numpy(),
            "open": bars["open"].to_numpy(dtype="float64"),
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "sessions": np.arange(1, len(adj) + 1),
            "ret1": _shifted_ratio(adj, 1),
            "ret5": _shifted_ratio(adj, 5),
            "ret20": _shifted_ratio(adj, 20),
            "sma20": _rolling(adj, SMA_WINDOW, "mean") * to_raw,
            "ema20": _recursive(adj, EMA_SPAN, 2 / (EMA_SPAN + 1)) * to_raw,
            "rsi14": rsi,
            "volatility20": volatility,
            "volume_ratio": volume / _rolling(volume, VOLUME_WINDOW, "mean"),
            "high52": _rolling(high * basis, YEAR_WINDOW, "max") * to_raw,
            "low52": _rolling(low * basis, YEAR_WINDOW, "min") * to_raw,
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


def render(ticker: str, as_of: dt.date, row: dict | None, bar_date: dt.date | None) -> str:
    """The snapshot text for one record from its indicator row (None: no bar at all).

    ``row`` maps the :func:`indicator_frame` columns to plain Python numbers (NaN: missing).
    """
    isnan = math.isnan
    head = (
        f"Market snapshot for {ticker} as of the close of {as_of} ({_WEEKDAYS[as_of.weekday()]})."
    )
    if row is None:
        return f"{head}\nNo price history is available for {ticker} on or before {as_of}."
    lines = [head]
    n = int(row["sessions"])
    history = f"{n} session{'s' if n > 1 else ''} of history"
    if bar_date != as_of:
        lines.append(
            f"No bar on {as_of} (market closed or data missing); figures are from the last "
            f"bar before it, {bar_date}."
        )
    close = row["close"]
    lines.append(
        f"Bar: open {row['open']:.2f}, high {row['high']:.2f}, low {row['low']:.2f}, "
        f"close {close:.2f}, volume {row['volume']:,.0f}."
    )
    ret1, ret5, ret20 = row["ret1"], row["ret5"], row["ret20"]
    if not isnan(ret20):  # the common case, in one format call
        lines.append(
            f"Returns: 1-day {_pct(ret1)}, 5-day {_pct(ret5)} ({move_reading(ret5)}), "
            f"20-day {_pct(ret20)}."
        )
    else:
        rets = [] if isnan(ret1) else [f"1-day {_pct(ret1)}"]
        if not isnan(ret5):
            rets.append(f"5-day {_pct(ret5)} ({move_reading(ret5)})")
        lines.append(
            "Returns: " + (", ".join(rets) if rets else f"not available ({history})") + "."
        )
    sma, ema = row["sma20"], row["ema20"]
    if isnan(sma):
        lines.append(
            f"Trend: SMA20 and EMA20 not available (need {SMA_WINDOW} sessions; {history})."
        )
    else:
        lines.append(
            f"Trend: close {_distance(close, sma)} SMA20 {sma:.2f} ({trend_reading(close, sma)}), "
            f"{_distance(close, ema)} EMA20 {ema:.2f}."
        )
    rsi = row["rsi14"]
    if isnan(rsi):
        lines.append(f"Momentum: RSI14 not available (needs {RSI_WINDOW + 1} sessions; {history}).")
    else:
        lines.append(f"Momentum: RSI14 {rsi:.1f} ({rsi_reading(rsi)}).")
    vol = row["volatility20"]
    if isnan(vol):
        lines.append(f"Volatility: 20-day not available ({history}).")
    else:
        lines.append(f"Volatility: 20-day {vol * 100:.1f}% annualised ({volatility_reading(vol)}).")
    ratio = row["volume_ratio"]
    if isnan(ratio):
        lines.append(f"Volume: 20-day average not available ({history}).")
    else:
        lines.append(f"Volume: {ratio:.2f}x its 20-day average ({volume_reading(ratio, ret1)}).")
    high, low = row["high52"], row["low52"]
    if isnan(high):
        lines.append(f"52-week range: not available (need {YEAR_WINDOW} sessions; {history}).")
    else:
        lines.append(
            f"52-week range: close {_distance(close, high)} the high {high:.2f} and "
            f"{_distance(close, low)} the low {low:.2f}."
        )
    return "\n".join(lines)


class TickerSnapshots:
    """One ticker's indicators, computed once; the snapshot of any record date from them.

    The indicators are kept as one float64 matrix (bars x columns) and a record's text is
    rendered only when asked for, so the dataset can write its prompts in their final order
    straight into Arrow instead of holding every prompt of every ticker as a Python string.
    """

    def __init__(self, ticker: str, bars: pd.DataFrame) -> None:
        frame = indicator_frame(bars)
        self.ticker = ticker
        self._days = frame["date"].to_numpy(dtype="datetime64[D]")
        self._dates: list[dt.date] = self._days.astype(dt.date).tolist()
        self._names = [c for c in frame.columns if c != "date"]
        self._values = frame[self._names].to_numpy(dtype="float64")

    def locate(self, dates: list[dt.date]) -> list[int]:
        """For each date, the index of the last bar dated on or before it (-1: none).

        A binary search: a record never sees a later bar.
        """
        wanted = np.array(dates, dtype="datetime64[D]")
        return (np.searchsorted(self._days, wanted, side="right") - 1).tolist()

    def bar_date(self, position: int) -> dt.date | None:
        """The date of the bar at ``position`` (None for -1: no bar)."""
        return self._dates[position] if position >= 0 else None

    def text(self, as_of: dt.date, position: int) -> str:
        """The snapshot for ``as_of`` from the bar at ``position`` (see :meth:`locate`)."""
        if position < 0:
            return render(self.ticker, as_of, None, None)
        # Plain Python floats from one row of the matrix: formatting numpy scalars one at a
        # time, or DataFrame.to_dict("records"), costs several times more.
        row = dict(zip(self._names, self._values[position].tolist(), strict=True))
        return render(self.ticker, as_of, row, self._dates[position])


def snapshots_for_ticker(ticker: str, bars: pd.DataFrame, dates: list[dt.date]) -> list[Snapshot]:
    """Snapshots for many record dates of one ticker, from one pass over its bars."""
    source = TickerSnapshots(ticker, bars)
    return [
        Snapshot(source.text(as_of, pos), source.bar_date(pos))
        for as_of, pos in zip(dates, source.locate(dates), strict=True)
    ]
