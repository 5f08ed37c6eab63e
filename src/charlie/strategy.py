"""The one trading strategy the backtest simulates and the evaluation scores, per row.

``configs/backtest_config.yaml``'s ``action_units`` and ``allow_shorts``
(:class:`charlie.backtest.config.BacktestConfig`) define the target position of each action;
the backtest trades it day by day, and the evaluation scores each row with it. One
difference is inherent to scoring rows one at a time: in the backtest HOLD (``null`` units)
and UNPARSEABLE keep the previous target, which a single row does not know, so the
evaluation scores them as 0 units (flat).
"""

from __future__ import annotations

from pathlib import Path

from charlie import ACTIONS, UNPARSEABLE
from charlie.backtest.config import BacktestConfig


def load_strategy(path: Path | str | None) -> BacktestConfig:
    """The backtest config at ``path`` (``None``: the backtest's defaults)."""
    if path is None:
        return BacktestConfig()
    from charlie.config import load_config

    return load_config(path, BacktestConfig)


def row_units(config: BacktestConfig) -> dict[str, float]:
    """Per action, UNPARSEABLE included, the units a per-row evaluation holds.

    The backtest's effective units (:meth:`BacktestConfig.units`: shorts clipped to 0 unless
    ``allow_shorts``), with "keep the current target" (HOLD's ``null``, and UNPARSEABLE) as 0.
    """
    units = config.units()
    out = {action: float(units[action] or 0.0) for action in ACTIONS}
    out[UNPARSEABLE] = 0.0
    return out


def describe(config: BacktestConfig) -> str:
    """``STRONG_BUY +2, BUY +1, HOLD 0, SELL 0, STRONG_SELL 0 (long-only)``, for the reports."""
    units = row_units(config)
    parts = ", ".join(f"{a} {units[a]:+g}" if units[a] else f"{a} 0" for a in ACTIONS)
    return f"{parts} ({'shorts allowed' if config.allow_shorts else 'long-only'})"
