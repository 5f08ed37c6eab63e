"""Point-in-time technical indicators, updated one bar at a time.

Conventions (shared by the sample's theses and the dataset's market snapshots, which must
agree): indicators are computed on adjusted closes, so a dividend or split is not mistaken for
a move, and levels (SMA20, highs, lows) are quoted in today's raw price terms (the adjusted
level times close / adj_close). Backward adjustment scales all earlier bars by the same factor,
so every ratio here is point-in-time: a later corporate action does not change it. Returns are
simple returns; SMA20 is the mean of the last 20 closes including today's; RSI14 is Wilder's (seeded with the simple mean of the first 14 changes, then smoothed
with alpha 1/14; 100 when there were no losses); the volume ratio divides today's volume by the
mean of the last 20 volumes including today's; volatility20 is the sample std (ddof=1) of the
last 20 daily returns, annualised with sqrt(252). An indicator without enough history is None.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

SMA_WINDOW = 20
RSI_WINDOW = 14
VOLUME_WINDOW = 20
VOLATILITY_WINDOW = 20


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Indicators as of one close, computed only from bars up to and including it."""

    sessions: int
    close: float
    volume: float
    ret1: float | None
    ret5: float | None
    ret20: float | None
    sma20: float | None
    rsi14: float | None
    volume_ratio: float | None
    volatility20: float | None
    high20: float | None
    low20: float | None

    def rescaled(self, factor: float) -> Snapshot:
        """The same snapshot with its price levels multiplied by ``factor``."""

        def scale(x: float | None) -> float | None:
            return None if x is None else x * factor

        return replace(
            self,
            close=self.close * factor,
            sma20=scale(self.sma20),
            high20=scale(self.high20),
            low20=scale(self.low20),
        )


class RollingIndicators:
    """Feed bars in date order with :meth:`update`; each call returns that day's snapshot."""

    def __init__(self) -> None:
        self._closes: deque[float] = deque(maxlen=SMA_WINDOW + 1)
        self._highs: deque[float] = deque(maxlen=SMA_WINDOW)
        self._lows: deque[float] = deque(maxlen=SMA_WINDOW)
        self._volumes: deque[float] = deque(maxlen=VOLUME_WINDOW)
        self._returns: deque[float] = deque(maxlen=VOLATILITY_WINDOW)
        self._sessions = 0
        self._seed_changes: list[float] = []
        self._avg_gain: float | None = None
        self._avg_loss: float | None = None

    def update(self, close: float, high: float, low: float, volume: float) -> Snapshot:
        """Add one bar and return the indicators as of its close."""
        closes = self._closes
        if closes:
            change = close - closes[-1]
            self._returns.append(close / closes[-1] - 1.0)
            self._update_rsi(change)
        closes.append(close)
        self._highs.append(high)
        self._lows.append(low)
        self._volumes.append(volume)
        self._sessions += 1
        n = self._sessions

        def ret(h: int) -> float | None:
            return close / closes[-1 - h] - 1.0 if n > h else None

        full = n >= SMA_WINDOW
        rets = self._returns
        volatility = None
        if len(rets) == VOLATILITY_WINDOW:
            mean = sum(rets) / len(rets)
            var = sum((r - mean) ** 2 for r in rets) / (len(rets) - 1)
            volatility = math.sqrt(var) * math.sqrt(252)
        return Snapshot(
            sessions=n,
            close=close,
            volume=volume,
            ret1=ret(1),
            ret5=ret(5),
            ret20=ret(20),
            sma20=sum(list(closes)[-SMA_WINDOW:]) / SMA_WINDOW if full else None,
            rsi14=self._rsi(),
            volume_ratio=volume / (sum(self._volumes) / VOLUME_WINDOW)
            if len(self._volumes) == VOLUME_WINDOW
            else None,
            volatility20=volatility,
            high20=max(self._highs) if full else None,
            low20=min(self._lows) if full else None,
        )

    def _update_rsi(self, change: float) -> None:
        gain, loss = max(change, 0.0), max(-change, 0.0)
        if self._avg_gain is None:
            self._seed_changes.append(change)
            if len(self._seed_changes) == RSI_WINDOW:
                self._avg_gain = sum(max(c, 0.0) for c in self._seed_changes) / RSI_WINDOW
                self._avg_loss = sum(max(-c, 0.0) for c in self._seed_changes) / RSI_WINDOW
            return
        assert self._avg_loss is not None
        self._avg_gain = (self._avg_gain * (RSI_WINDOW - 1) + gain) / RSI_WINDOW
        self._avg_loss = (self._avg_loss * (RSI_WINDOW - 1) + loss) / RSI_WINDOW

    def _rsi(self) -> float | None:
        if self._avg_gain is None or self._avg_loss is None:
            return None
        if self._avg_loss == 0:
            return 100.0
        return 100.0 - 100.0 / (1.0 + self._avg_gain / self._avg_loss)


# ----------------------------------------------------------------------------- readings
# The conventional words printed beside each number, shared by theses and snapshots.


def trend_reading(close: float, sma20: float) -> str:
    """uptrend when the close is >= 1.01 x SMA20, downtrend when <= 0.99 x, else flat."""
    return "uptrend" if close >= 1.01 * sma20 else "downtrend" if close <= 0.99 * sma20 else "flat"


def move_reading(ret5: float) -> str:
    """rising when the 5-day return is >= +2%, falling when <= -2%, else steady."""
    return "rising" if ret5 >= 0.02 else "falling" if ret5 <= -0.02 else "steady"


def rsi_reading(rsi: float) -> str:
    """overbought >= 70, firm >= 55, neutral, soft <= 45, oversold <= 30."""
    if rsi >= 70:
        return "overbought"
    if rsi <= 30:
        return "oversold"
    if rsi >= 55:
        return "firm"
    if rsi <= 45:
        return "soft"
    return "neutral"


def volume_reading(ratio: float, ret1: float | None = None) -> str:
    """heavy >= 1.5x the 20-day average, quiet < 0.8x, else normal.

    With the day's return, heavy volume also says which way the day went: heavy buying on an
    up day, heavy selling on a down day (volume confirms a move, so the direction is what it
    signals); plain heavy on an unchanged day or without the return.
    """
    if ratio < 1.5:
        return "quiet" if ratio < 0.8 else "normal"
    if ret1 is None or math.isnan(ret1) or ret1 == 0:
        return "heavy"
    return "heavy buying" if ret1 > 0 else "heavy selling"


def volatility_reading(annualised: float) -> str:
    """low < 15%, moderate < 30%, high < 50%, else very high (annualised)."""
    if annualised < 0.15:
        return "low"
    if annualised < 0.30:
        return "moderate"
    if annualised < 0.50:
        return "high"
    return "very high"
