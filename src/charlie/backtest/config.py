"""The backtest config file (``configs/backtest_config.yaml``): costs, sizing, action mapping.

The seed's keys (``initial_cash``, ``transaction_cost_bps``, ``slippage_bps``,
``position_sizing``, ``fixed_pct_value``) keep their names and meaning; the rest make the
conventions explicit. Every key is validated on load with one sentence naming it.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from charlie import ACTIONS
from charlie.config import Section

MAX_UNITS = 100
MAX_CASH = 1e15  # a thousand trillion: beyond it float64 cents stop adding up


class ActionUnits(Section):
    """Target position, in units, that each predicted action asks for.

    ``null`` means "keep the current target" (the default for HOLD). Negative units are
    shorts; without ``allow_shorts`` they become 0 (flat).
    """

    STRONG_BUY: float | None = 2.0
    BUY: float | None = 1.0
    HOLD: float | None = None
    SELL: float | None = -1.0
    STRONG_SELL: float | None = -2.0

    @field_validator("*")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and abs(value) <= MAX_UNITS):
            raise ValueError(f"units must be a number from -{MAX_UNITS} to {MAX_UNITS}, or null "
                             "(keep the current target)")  # fmt: skip
        return value


class BacktestConfig(Section):
    """How predictions become positions, and what trading them costs."""

    initial_cash: float = Field(
        1_000_000.0, gt=0, le=MAX_CASH, description="Starting equity, all cash."
    )
    currency: str = Field(
        "USD",
        pattern=r"^[A-Z]{3}$",
        description="The prices' currency (ISO 4217): the report's axes.",
    )
    transaction_cost_bps: float = Field(
        5.0, ge=0, le=10_000, description="Commission: bps of traded notional (at the fill)."
    )
    slippage_bps: float = Field(
        10.0, ge=0, lt=10_000, description="Fill price moved this many bps against the trade."
    )
    position_sizing: Literal["fixed_pct", "equal_weight"] = Field(
        "fixed_pct",
        description="fixed_pct: a unit is fixed_pct_value of equity per ticker; equal_weight: "
        "a unit is equity / (tickers x max units), so an all-STRONG_BUY book is fully invested.",
    )
    fixed_pct_value: float = Field(0.02, gt=0, le=1, description="Equity per unit (fixed_pct).")
    allow_shorts: bool = Field(False, description="Without it, negative units are flat.")
    action_units: ActionUnits = ActionUnits()
    rebalance_band: float | None = Field(
        0.05,
        ge=0,
        description="Trade a ticker only when its target changes or its weight drifts from "
        "the target by more than this fraction of the target (0.05: a 4 % target is traded "
        "back outside 3.8 %..4.2 %); 0 trades any drift, null rebalances every day.",
    )
    price_basis: Literal["adjusted", "raw"] = Field(
        "adjusted",
        description="adjusted: open and close scaled by adj_close/close, so dividends and "
        "splits are in the returns; raw: traded prices as quoted, dividends ignored.",
    )
    risk_free_per_period: float = Field(
        0.0,
        gt=-0.01,
        lt=0.01,
        description="Daily risk-free return for Sharpe and Sortino (1% a day is 1,100% a year: "
        "refused as a unit mistake; 0.0002 is about 5% a year).",
    )
    min_parse_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Refuse (exit 2) predictions with a smaller share of parsed actions, or "
        "with none at all, unless --force.",
    )
    sharpe_confidence: float = Field(
        0.95, gt=0, lt=1, description="Two-sided confidence level of the Sharpe ratio's interval."
    )
    cost_sensitivity_bps: list[float] = Field(
        [0.0, 5.0, 10.0, 25.0, 50.0],
        description="Commissions (bps) to rerun strategy and benchmark at, slippage unchanged.",
    )

    @field_validator("cost_sensitivity_bps")
    @classmethod
    def _bps_in_range(cls, values: list[float]) -> list[float]:
        for value in values:
            if not 0 <= value <= 10_000:
                raise ValueError(f"{value} is outside 0..10000 bps")
        return values

    max_leverage: float = Field(
        1.0,
        gt=0,
        le=10,
        description="Largest single position, long or short, as a multiple of equity: "
        "fixed_pct refuses units x fixed_pct_value above it (equal_weight never reaches 1).",
    )

    @model_validator(mode="after")
    def _within_leverage(self) -> BacktestConfig:
        if self.position_sizing == "fixed_pct":
            largest = self.max_units() * self.fixed_pct_value
            if largest > self.max_leverage:
                raise ValueError(
                    f"the largest position is {largest:g}x equity (units {self.max_units():g} x "
                    f"fixed_pct_value {self.fixed_pct_value:g}), above max_leverage "
                    f"{self.max_leverage:g}"
                )
        return self

    @model_validator(mode="after")
    def _something_to_hold(self) -> BacktestConfig:
        if self.max_units() == 0:
            raise ValueError(
                "every action maps to 0 units (or, without allow_shorts, to a short), "
                "so nothing could ever be held"
            )
        return self

    def units(self) -> dict[str, float | None]:
        """Effective units per action, shorts clipped to 0 unless allowed; None = keep."""
        out: dict[str, float | None] = {}
        for action in ACTIONS:
            value = getattr(self.action_units, action)
            if value is not None and not self.allow_shorts:
                value = max(value, 0.0)
            out[action] = value
        return out

    def max_units(self) -> float:
        """The largest |units| any action can ask for (equal_weight sizes a unit by it)."""
        return max((abs(v) for v in self.units().values() if v is not None), default=0.0)
