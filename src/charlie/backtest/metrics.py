"""Risk and return metrics with empyrical's conventions, as small pure functions.

Each function takes simple daily returns (a 1-D array or Series, no NaN) and returns a float.
Conventions (DESIGN.md, "Risk metrics"):

* ``periods`` = 252 trading days a year;
* standard deviations are sample ones (``ddof=1``);
* the risk-free rate (and Sortino's required return) is per period, default 0;
* downside deviation averages over *all* observations, returns above the target counting 0;
* drawdowns are measured from the initial equity (1.0), so a first-day loss is a drawdown;
* CAGR = (prod(1 + r)) ** (periods / n) - 1, and -1 when the equity is wiped out.

CAGR and Calmar compound a period's growth up to a year, so :func:`summary` (what the backtest
reports) leaves them NaN for a period shorter than a year (``periods`` returns): 77 days at
-7.6 % would read as a CAGR of -22.7 %. Volatility, Sharpe and Sortino stay: they are
annualised *rates* (mean x periods, standard deviation x sqrt(periods)), not extrapolated
growth.

The Sharpe ratio's uncertainty (:func:`sharpe_inference`) uses the per-period ratio, the
sample skewness and the (non-excess) kurtosis of the returns: Mertens' (2002) standard error,
the probabilistic Sharpe ratio and the deflated Sharpe ratio of Bailey and Lopez de Prado
(2012, 2014). :func:`relative` measures returns against a benchmark's (beta, alpha with its
t-statistic, information ratio).

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
from statistics import NormalDist
from typing import Literal

import numpy as np

PERIODS = 252
NORMAL = NormalDist()
"""The standard normal distribution (its ``cdf`` and ``inv_cdf``)."""
EULER_GAMMA = 0.5772156649015329


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


def wiped_out(returns) -> bool:
    """Whether the book lost everything (a return of -100%): a terminal state, after which no
    ratio of mean to spread describes the strategy."""
    return bool(np.any(_returns(returns) <= -1.0))


def sharpe_ratio(returns, risk_free: float = 0.0, periods: int = PERIODS) -> float:
    """mean(r - rf) / std(r - rf, ddof=1) x sqrt(periods); NaN for zero variance or a
    wiped-out book."""
    excess = _returns(returns) - risk_free
    if _zero_variance(excess) or wiped_out(returns):
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
    """mean(r - required) x periods / downside deviation; NaN for zero variance, no downside
    or a wiped-out book."""
    values = _returns(returns)
    if _zero_variance(values) or wiped_out(values):
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


def higher_moments(returns) -> tuple[float, float]:
    """(skewness, kurtosis) with population moments: m3 / m2^1.5 and m4 / m2^2 (normal: 0, 3).

    NaN for fewer than 2 returns or zero variance.
    """
    values = _returns(returns)
    if _zero_variance(values):
        return math.nan, math.nan
    centred = values - values.mean()
    m2 = float(np.mean(centred**2))
    return float(np.mean(centred**3)) / m2**1.5, float(np.mean(centred**4)) / m2**2


def _sharpe_variance_factor(sr: float, skew: float, kurtosis: float) -> float:
    """1 - skew x SR + (kurtosis - 1) / 4 x SR^2, for a per-period SR (never below 0)."""
    return 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr * sr


def probabilistic_sharpe(returns, threshold: float = 0.0, risk_free: float = 0.0) -> float:
    """P(true Sharpe > threshold): Phi((SR - SR*) sqrt(n - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2)).

    Bailey and Lopez de Prado (2012). ``SR`` is the per-period (not annualised) Sharpe of the
    returns over ``risk_free``, ``threshold`` the per-period ``SR*``, g3 and g4 the returns'
    skewness and kurtosis (:func:`higher_moments`); NaN where the Sharpe ratio is undefined.
    """
    excess = _returns(returns) - risk_free
    if _zero_variance(excess) or not math.isfinite(threshold):
        return math.nan
    sr = float(np.mean(excess) / np.std(excess, ddof=1))
    skew, kurtosis = higher_moments(excess)
    factor = _sharpe_variance_factor(sr, skew, kurtosis)
    if not factor > 0:
        return math.nan
    return NORMAL.cdf((sr - threshold) * math.sqrt(excess.size - 1) / math.sqrt(factor))


def expected_max_sharpe(trial_sharpes) -> float:
    """The expected largest of N trials' Sharpe ratios when every true Sharpe is 0.

    sqrt(V) x ((1 - e) x Phi^-1(1 - 1/N) + e x Phi^-1(1 - 1/(N x exp(1)))), with V the sample
    variance of the trials' Sharpe ratios and e the Euler-Mascheroni constant (Bailey and
    Lopez de Prado 2014); the ratios' unit (per period or annualised) is the result's. NaN with
    fewer than 2 finite trials.
    """
    values = np.asarray(trial_sharpes, dtype=np.float64)
    values = values[np.isfinite(values)]
    n = values.size
    if n < 2:
        return math.nan
    spread = math.sqrt(float(np.var(values, ddof=1)))
    return spread * (
        (1 - EULER_GAMMA) * NORMAL.inv_cdf(1 - 1 / n)
        + EULER_GAMMA * NORMAL.inv_cdf(1 - 1 / (n * math.e))
    )


def sharpe_inference(
    returns,
    *,
    benchmark_sharpe: float = math.nan,
    trial_sharpes=(),
    risk_free: float = 0.0,
    confidence: float = 0.95,
    periods: int = PERIODS,
) -> dict[str, float | int]:
    """The Sharpe ratio with its uncertainty; ratios in and out are annualised.

    Keys: ``sharpe``; ``standard_error`` (Mertens: sqrt((1 - g3 SR + (g4 - 1) / 4 SR^2) /
    (n - 1)) on the per-period SR, x sqrt(periods)); ``ci_low`` and ``ci_high`` (normal,
    two-sided ``confidence``); ``skewness``, ``kurtosis``; ``observations``;
    ``probabilistic_sharpe_vs_benchmark`` (:func:`probabilistic_sharpe` with SR* the
    ``benchmark_sharpe``); ``n_trials`` (finite ``trial_sharpes``), ``expected_max_sharpe`` of
    them (:func:`expected_max_sharpe`) and ``deflated_sharpe`` (the probabilistic Sharpe ratio
    against that maximum). The last two are NaN with fewer than 2 trials.

    Args:
        returns: Simple daily returns.
        benchmark_sharpe: The benchmark's annualised Sharpe ratio (SR* of the PSR).
        trial_sharpes: Annualised Sharpe ratios of every configuration tried, this one included.
        risk_free: Per-period risk-free return.
        confidence: Two-sided level of the interval, in (0, 1).
        periods: Periods a year.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence!r}")
    excess = _returns(returns) - risk_free
    root = math.sqrt(periods)
    out: dict[str, float | int] = {
        "sharpe": sharpe_ratio(excess, 0.0, periods),
        "standard_error": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "confidence": confidence,
        "skewness": math.nan,
        "kurtosis": math.nan,
        "observations": int(excess.size),
        "probabilistic_sharpe_vs_benchmark": probabilistic_sharpe(excess, benchmark_sharpe / root),
    }
    if math.isfinite(out["sharpe"]):
        sr = out["sharpe"] / root
        skew, kurtosis = higher_moments(excess)
        factor = _sharpe_variance_factor(sr, skew, kurtosis)
        error = math.sqrt(factor / (excess.size - 1)) * root if factor >= 0 else math.nan
        z = NORMAL.inv_cdf(0.5 + confidence / 2)
        out.update(
            standard_error=error,
            ci_low=out["sharpe"] - z * error,
            ci_high=out["sharpe"] + z * error,
            skewness=skew,
            kurtosis=kurtosis,
        )
    trials = np.asarray(trial_sharpes, dtype=np.float64)
    trials = trials[np.isfinite(trials)]
    benchmark_max = expected_max_sharpe(trials)
    out["n_trials"] = int(trials.size)
    out["expected_max_sharpe"] = benchmark_max
    out["deflated_sharpe"] = probabilistic_sharpe(excess, benchmark_max / root)
    return out


def relative(returns, benchmark, risk_free: float = 0.0, periods: int = PERIODS) -> dict:
    """Returns against a benchmark's, both in excess of ``risk_free``: OLS y = a + b x + e.

    Keys: ``beta`` (b); ``alpha`` (a x periods, annualised arithmetically); ``alpha_t`` (a over
    its OLS standard error, residual variance over n - 2); ``tracking_error`` (sample std of
    r - r_benchmark x sqrt(periods)); ``information_ratio`` (mean(r - r_benchmark) x periods
    / tracking_error). NaN where undefined (fewer than 3 days, a constant benchmark, or a zero
    tracking error).
    """
    y, x = _returns(returns) - risk_free, _returns(benchmark) - risk_free
    if y.shape != x.shape:
        raise ValueError(f"returns {y.shape} and benchmark {x.shape} must be the same length")
    out = dict.fromkeys(("beta", "alpha", "alpha_t", "tracking_error", "information_ratio"),
                        math.nan)  # fmt: skip
    if x.size >= 2 and not _zero_variance(x):
        sxx = float(np.sum((x - x.mean()) ** 2))
        beta = float(np.sum((x - x.mean()) * (y - y.mean()))) / sxx
        alpha = float(y.mean() - beta * x.mean())
        out.update(beta=beta, alpha=alpha * periods)
        if x.size >= 3:
            residual = y - alpha - beta * x
            s2 = float(np.sum(residual**2)) / (x.size - 2)
            error = math.sqrt(s2 * (1 / x.size + x.mean() ** 2 / sxx))
            out["alpha_t"] = alpha / error if error > 0 else math.nan
    difference = y - x
    if difference.size >= 2:
        spread = float(np.std(difference, ddof=1))
        out["tracking_error"] = spread * math.sqrt(periods)
        if spread > 0 and not _zero_variance(difference):
            out["information_ratio"] = float(difference.mean()) * periods / out["tracking_error"]
    return out


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
    full_year: bool = False
    """Undefined (NaN) for a period shorter than a year: it extrapolates growth to one."""
    label: str = ""
    """Its name for people (the report's tables); the key stays the JSON's."""


METRICS: dict[str, Metric] = {
    "total_return": Metric(lambda x: total_return(x.returns), "pct", label="Total return"),
    "cagr": Metric(lambda x: cagr(x.returns, x.periods), "pct", full_year=True, label="CAGR"),
    "annual_volatility": Metric(
        lambda x: annual_volatility(x.returns, x.periods), "pct", label="Volatility (annualised)"
    ),
    "sharpe": Metric(
        lambda x: sharpe_ratio(x.returns, x.risk_free, x.periods), "num", label="Sharpe ratio"
    ),
    "sortino": Metric(
        lambda x: sortino_ratio(x.returns, x.risk_free, x.periods), "num", label="Sortino ratio"
    ),
    "max_drawdown": Metric(lambda x: max_drawdown(x.returns), "pct", label="Max drawdown"),
    "calmar": Metric(
        lambda x: calmar_ratio(x.returns, x.periods), "num", full_year=True, label="Calmar ratio"
    ),
    "turnover": Metric(
        lambda x: annual_turnover(x.turnover, x.periods), "x", label="Turnover (annualised)"
    ),
    "n_trades": Metric(lambda x: x.n_trades, "int", difference=False, label="Fills"),
    "exposure": Metric(
        lambda x: mean_exposure(x.gross_exposure), "pct", label="Gross exposure (mean)"
    ),
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
    full_year_only: bool = True,
) -> dict[str, float | int]:
    """Every metric in :data:`METRICS` for one return series, by name.

    With ``full_year_only`` (the default) a metric marked ``full_year`` is NaN when there are
    fewer than ``periods`` returns (:func:`annualised`).
    """
    inputs = MetricInputs(
        returns=_returns(returns),
        turnover=np.asarray(turnover, dtype=np.float64),
        gross_exposure=np.asarray(gross_exposure, dtype=np.float64),
        n_trades=int(n_trades),
        risk_free=risk_free,
        periods=periods,
    )
    short = full_year_only and not annualised(inputs.returns.size, periods)
    return {
        name: math.nan if short and metric.full_year else metric.compute(inputs)
        for name, metric in METRICS.items()
    }


def annualised(n_returns: int, periods: int = PERIODS) -> bool:
    """Whether a period of ``n_returns`` is long enough (a year) for CAGR and Calmar."""
    return n_returns >= periods
