"""The portfolio backtest: predictions in, a cost-aware daily simulation and its report out.

* ``engine``: pure numpy kernels on date x ticker arrays (:func:`simulate`).
* ``metrics``: empyrical-convention metrics, ``f(returns, periods=252) -> float``.
* ``report``: the pandas layer (:func:`run_backtest`) and the outputs (:func:`write_outputs`).
* ``config``: :class:`BacktestConfig`, the typed ``configs/backtest_config.yaml``.

The stage is ``charlie backtest`` (``charlie.stages.backtest``).
"""

from charlie.backtest.config import ActionUnits, BacktestConfig, load_backtest_config
from charlie.backtest.engine import Simulation, simulate
from charlie.backtest.report import (
    BacktestResult,
    prepare_predictions,
    price_window,
    run_backtest,
    write_outputs,
)

__all__ = [
    "ActionUnits",
    "BacktestConfig",
    "BacktestResult",
    "Simulation",
    "load_backtest_config",
    "prepare_predictions",
    "price_window",
    "run_backtest",
    "simulate",
    "write_outputs",
]
