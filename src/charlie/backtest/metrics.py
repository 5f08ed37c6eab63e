"""Risk and return metrics with empyrical's conventions, as small pure functions.

Each function takes simple daily returns (a 1-D array or Series, no NaN) and returns a float.
Conventions (DESIGN.md, "Risk metrics"):

* ``periods`` = 252 trading days a year;
* standard deviations are sample ones (``ddof=1``);
* the risk-free rate (and Sortino's required return) is per period, default 0;
* downside deviation averages over *all* observations, returns above the target counting 0;
* drawdowns are measured from the initial equity (1.0), so a first-day loss is a drawdown;
* CAGR = (prod(1 + r)) ** (periods / n) - 1, and -1 when the equity is wiped out.

Undefined values are NaN, never an exception: every metric of an empty series; volatility,
Sharpe and Sortino of fewer than 2 returns; Sharpe and Sortino of zero-variance returns
(all equal); Sortino when no return is below the target (empyrical gives inf there); Calmar
without a drawdown.

:data:`METRICS` is the registry the backtest reports: each entry names a metric, how to
compute it from a :class:`MetricInputs` and how to display it. Adding a metric is one entry
there: :func:`summary` (hence the metrics JSON) and the HTML report's table follow it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

PERIODS = 252


def _returns(returns) -> np.ndarray:
    values = np.asarray(returns, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"returns must be one-dimensional, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("returns must be finite (no NaN or inf)")
    if (values < -1).any():
        raise ValueError("a simple return below -1 (-100 %) is impossible")
    return values


def _zero_variance(values: np.ndarray) -> bool:
    return values.size < 2 or bool((values == values[0]).all())


def total_return(returns) -> float:
    """Compounded return over the whole series: prod(1 + r) - 1; NaN when empty."""
    values = _returns(returns)
    return float(np.prod(1.0 + values) - 1.0) if values.size else math.nan


def cagr(returns, periods: int = PERIODS) -> float:
    """Compound annual growth rate: prod(1 + r) ** (periods / n) - 1 (empyrical's annual_return)."""
    values = _returns(returns)
    if not values.size:
        return math.nan
    ending = float(np.prod(1.0 + values))
    return ending ** (periods / values.size) - 1.0 if ending > 0 else -1.0


def annual_volatility(returns, periods: int = PERIODS) -> float:
    """Sample standard deviation (ddof=1) x sqrt(periods); NaN with fewer than 2 returns."""
    values = _returns(returns)
    if values.size < 2:
        return math.nan
    return float(np.std(values, ddof=1) * math.sqrt(periods))


def sharpe_ratio(returns, risk_free: float = 0.0, periods: int = PERIODS) -> float:
    """mean(r - rf) / std(r - rf, ddof=1) x sqrt(periods); NaN for zero variance."""
    excess = _returns(returns) - risk_free
    if _zero_variance(excess):
        return math.nan
    return float(np.mean(excess) / np.std(excess, ddof=1) * math.sqrt(periods))


def downside_deviation(returns, required_return: float = 0.0, periods: int = PERIODS) -> float:
    """sqrt(mean(min(r - required, 0) ** 2)) x sqrt(periods), over all observations."""
    values = _returns(returns)
    if not values.size:
        return math.nan
    below = np.minimum(values - required_return, 0.0)
    return float(math.sqrt(np.mean(below * below)) * math.sqrt(periods))


def sortino_ratio(returns, required_return: float = 0.0, periods: int = PERIODS) -> float:
    """mean(r - required) x periods / downside deviation; NaN for zero variance or no downside."""
    values = _returns(returns)
    if _zero_variance(values):
        return math.nan
    downside = downside_deviation(values, required_return, periods)
    if downside == 0:
        return math.nan
    return float(np.mean(values - required_return) * periods / downside)


def drawdown(returns) -> np.ndarray:
    """Drawdown after each return, from the running peak of equity that starts at 1.0."""
    values = _returns(returns)
    equity = np.cumprod(1.0 + values)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    return equity / peak - 1.0


def max_drawdown(returns) -> float:
    """The deepest drawdown (<= 0) from the initial equity or any later peak; NaN when empty."""
    values = _returns(returns)
    return float(drawdown(values).min()) if values.size else math.nan


def calmar_ratio(returns, periods: int = PERIODS) -> float:
    """CAGR / |max drawdown|; NaN without a drawdown."""
    worst = max_drawdown(returns)
    if not worst < 0:
        return math.nan
    return cagr(returns, periods) / abs(worst)


def annual_turnover(turnover, periods: int = PERIODS) -> float:
    """Mean daily turnover (traded notional / previous equity, both sides) x periods."""
    values = np.asarray(turnover, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean() * periods) if values.size else math.nan


def mean_exposure(gross_exposure) -> float:
    """Average gross exposure (sum of |position value| / equity) over the days."""
    values = np.asarray(gross_exposure, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


# ---------------------------------------------------------------- the registry


Format = Literal["pct", "num", "x", "int"]
"""How the report shows a value: percent (2 decimals), number (3), multiple (``2.00x``), count."""


@dataclass(frozen=True)
class MetricInputs:
    """What a metric may be computed from: one book's daily series over the whole period."""

    returns: np.ndarray
    """Simple daily returns, checked (finite, >= -1)."""
    turnover: np.ndarray
    """Daily traded notional (buys + sells) / the previous equity."""
    gross_exposure: np.ndarray
    """Daily sum of |position value| / equity."""
    n_trades: int
    risk_free: float
    """Per period; also Sortino's required return."""
    periods: int


@dataclass(frozen=True)
class Metric:
    """One reported metric: how it is computed and shown."""

    compute: Callable[[MetricInputs], float | int]
    format: Format
    difference: bool = True
    """Whether the report shows strategy minus benchmark (a count of fills does not)."""


METRICS: dict[str, Metric] = {
    "total_return": Metric(lambda x: total_return(x.returns), "pct"),
    "cagr": Metric(lambda x: cagr(x.returns, x.periods), "pct"),
    "annual_volatility": Metric(lambda x: annual_volatility(x.returns, x.periods), "pct"),
    "sharpe": Metric(lambda x: sharpe_ratio(x.returns, x.risk_free, x.periods), "num"),
    "sortino": Metric(lambda x: sortino_ratio(x.returns, x.risk_free, x.periods), "num"),
    "max_drawdown": Metric(lambda x: max_drawdown(x.returns), "pct"),
    "calmar": Metric(lambda x: calmar_ratio(x.returns, x.periods), "num"),
    "turnover": Metric(lambda x: annual_turnover(x.turnover, x.periods), "x"),
    "n_trades": Metric(lambda x: x.n_trades, "int", difference=False),
    "exposure": Metric(lambda x: mean_exposure(x.gross_exposure), "pct"),
}
"""Every metric the backtest reports, in the report's order: name -> :class:`Metric`."""

METRIC_NAMES = tuple(METRICS)
"""The registry's names, in order (:func:`summary` and the report read :data:`METRICS`)."""


def summary(
    returns,
    *,
    turnover=(),
    gross_exposure=(),
    n_trades: int = 0,
    risk_free: float = 0.0,
    periods: int = PERIODS,
) -> dict[str, float | int]:
    """Every metric in :data:`METRICS` for one return series, by name."""
    inputs = MetricInputs(
        returns=_returns(returns),
        turnover=np.asarray(turnover, dtype=np.float64),
        gross_exposure=np.asarray(gross_exposure, dtype=np.float64),
        n_trades=int(n_trades),
        risk_free=risk_free,
        periods=periods,
    )
    return {name: metric.compute(inputs) for name, metric in METRICS.items()}
