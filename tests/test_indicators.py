import itertools
import math
import random

import pytest

from charlie.indicators import RollingIndicators


def reference_rsi(closes: list[float], n: int = 14) -> float | None:
    """Wilder's RSI written out the long way, as an independent check."""
    if len(closes) < n + 1:
        return None
    changes = [b - a for a, b in itertools.pairwise(closes)]
    gain = sum(max(c, 0) for c in changes[:n]) / n
    loss = sum(max(-c, 0) for c in changes[:n]) / n
    for c in changes[n:]:
        gain = (gain * (n - 1) + max(c, 0)) / n
        loss = (loss * (n - 1) + max(-c, 0)) / n
    return 100.0 if loss == 0 else 100 - 100 / (1 + gain / loss)


def feed(closes, volumes=None):
    roll = RollingIndicators()
    volumes = volumes or [1000.0] * len(closes)
    return [roll.update(c, c * 1.01, c * 0.99, v) for c, v in zip(closes, volumes, strict=True)]


def test_hand_computed_values_on_a_straight_line():
    snaps = feed([float(i) for i in range(1, 22)], [100.0] * 20 + [300.0])
    last = snaps[-1]
    assert last.sessions == 21
    assert last.sma20 == pytest.approx(sum(range(2, 22)) / 20)  # 11.5
    assert last.ret1 == pytest.approx(21 / 20 - 1)
    assert last.ret5 == pytest.approx(21 / 16 - 1)
    assert last.ret20 == pytest.approx(21 / 1 - 1)
    assert last.rsi14 == 100.0  # no losses at all
    assert last.volume_ratio == pytest.approx(300 / ((19 * 100 + 300) / 20))
    assert last.high20 == pytest.approx(21 * 1.01)
    assert last.low20 == pytest.approx(2 * 0.99)


def test_missing_history_is_none_not_invented():
    snaps = feed([10.0, 11.0, 12.0])
    assert snaps[0].ret1 is None
    assert snaps[2].ret1 == pytest.approx(12 / 11 - 1)
    assert snaps[2].sma20 is None and snaps[2].rsi14 is None and snaps[2].ret5 is None
    assert snaps[2].volume_ratio is None and snaps[2].volatility20 is None


def test_rolling_values_match_independent_recomputation():
    rng = random.Random(3)
    closes = [100.0]
    for _ in range(120):
        closes.append(closes[-1] * (1 + rng.gauss(0, 0.02)))
    snaps = feed(closes)
    for i in (14, 15, 19, 20, 21, 60, 120):
        window = closes[: i + 1]
        snap = snaps[i]
        assert snap.rsi14 == pytest.approx(reference_rsi(window))
        if i >= 19:
            assert snap.sma20 == pytest.approx(sum(window[-20:]) / 20)
        if i >= 20:
            rets = [b / a - 1 for a, b in zip(window[-21:-1], window[-20:], strict=True)]
            mean = sum(rets) / 20
            std = math.sqrt(sum((r - mean) ** 2 for r in rets) / 19)
            assert snap.volatility20 == pytest.approx(std * math.sqrt(252))
