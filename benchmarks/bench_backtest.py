"""The backtest engine at scale, side by side with vectorbt's ``Portfolio.from_orders``.

    .venv/bin/python benchmarks/bench_backtest.py [--repeat 3] [--tickers 1000] [--days 2520]

vectorbt is a benchmark-only extra, never a runtime dependency: ``pip install vectorbt==1.2.0``.
Without it, charlie's times are still reported.

The book: --tickers x --days of seeded random actions (STRONG_BUY .. STRONG_SELL, HOLD keeping
the target) on random-walk prices with overnight gaps, mapped as ``configs/backtest_config.yaml``
maps them but with equal_weight sizing (a unit is 1 / (tickers x 2), so the book is at most
fully invested and neither engine runs short of cash), long only, 5 bps commission and 10 bps
slippage. Reported, best of --repeat:

* charlie: ``engine.simulate`` on the target weights: decided at the close, filled at the next
  open with slippage and commission, marked at the close, equity every day.
  Target: < 1 s on 2 cores.
* charlie from actions: ``hold_forward`` + sizing + ``simulate`` (the stage's whole kernel).
* vectorbt: ``Portfolio.from_orders`` on the same weights, lagged one day (an order on bar t
  fills at that bar's ``price``, the open), ``size_type="targetpercent"``, cash shared by
  the group, sells before buys, then ``.value()``; its first call (numba compilation) is not
  counted. Target: charlie's time <= vectorbt's.
* the largest difference between the two equity curves, relative to the initial cash.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from charlie.backtest import engine
from charlie.backtest.config import BacktestConfig
from common import best_of, met

INITIAL_CASH = 1_000_000.0
COMMISSION_BPS, SLIPPAGE_BPS = 5.0, 10.0


def make_book(days: int, tickers: int, seed: int = 0):
    """Random-walk opens and closes, and random actions as units (NaN = HOLD)."""
    rng = np.random.default_rng(seed)
    gap = rng.normal(0, 0.004, (days, tickers))
    intraday = rng.normal(0.0002, 0.012, (days, tickers))
    close = 50 * np.cumprod((1 + gap) * (1 + intraday), axis=0)
    open_ = close / (1 + intraday)
    units_by_action = BacktestConfig().units()  # STRONG_BUY 2, BUY 1, HOLD keep, sells flat
    table = np.array([np.nan if u is None else u for u in units_by_action.values()])
    decisions = table[rng.integers(0, len(table), (days, tickers))]
    return open_, close, decisions


def weights_from_actions(decisions: np.ndarray) -> np.ndarray:
    unit = engine.unit_weight("equal_weight", decisions.shape[1], max_units=2)
    return engine.hold_forward(decisions) * unit


def charlie(open_, close, weights) -> engine.Simulation:
    return engine.simulate(
        open_, close, weights, initial_cash=INITIAL_CASH,
        commission_bps=COMMISSION_BPS, slippage_bps=SLIPPAGE_BPS,
    )  # fmt: skip


def charlie_from_actions(open_, close, decisions) -> engine.Simulation:
    return charlie(open_, close, weights_from_actions(decisions))


def vectorbt_equity(vbt, open_, close, weights) -> np.ndarray:
    size = np.vstack([np.full((1, weights.shape[1]), np.nan), weights[:-1]])
    portfolio = vbt.Portfolio.from_orders(
        close=close, size=size, size_type="targetpercent", price=open_,
        fees=COMMISSION_BPS * 1e-4, slippage=SLIPPAGE_BPS * 1e-4, init_cash=INITIAL_CASH,
        cash_sharing=True, group_by=True, call_seq="auto", freq="1D",
    )  # fmt: skip
    return np.asarray(portfolio.value(), dtype=np.float64).reshape(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    parser.add_argument("--tickers", type=int, default=1000, help="columns of the book")
    parser.add_argument("--days", type=int, default=2520, help="rows of the book")
    args = parser.parse_args()

    open_, close, decisions = make_book(args.days, args.tickers)
    weights = weights_from_actions(decisions)
    t_ours, sim = best_of(args.repeat, charlie, open_, close, weights)
    t_actions, _ = best_of(args.repeat, charlie_from_actions, open_, close, decisions)

    try:
        import vectorbt as vbt
    except ImportError:
        vbt = None
    t_vbt = diff = None
    if vbt is not None:
        vectorbt_equity(vbt, open_[:5, :2], close[:5, :2], weights[:5, :2])  # numba compiles
        t_vbt, vbt_curve = best_of(args.repeat, vectorbt_equity, vbt, open_, close, weights)
        diff = float(np.max(np.abs(vbt_curve - sim.equity)) / INITIAL_CASH)

    trades = int(np.count_nonzero(sim.traded))
    print(
        f"book: {args.tickers} tickers x {args.days} days, {trades:,} fills, "
        f"final equity {sim.equity[-1]:,.0f}; best of {args.repeat}, {os.cpu_count()} cores"
    )
    print(f"{'measurement':<50}{'seconds':>9}")
    print(f"{'charlie engine.simulate (target weights)':<50}{t_ours:>9.3f}   "
          f"target < 1 s: {met(t_ours < 1)}")  # fmt: skip
    print(f"{'charlie from actions (hold + sizing + simulate)':<50}{t_actions:>9.3f}")
    if vbt is None:
        print("vectorbt is not installed, so there is no reference: it is a benchmark-only "
              "extra, `pip install vectorbt==1.2.0`")  # fmt: skip
        return
    ratio = t_ours / t_vbt
    print(f"{f'vectorbt {vbt.__version__} Portfolio.from_orders + value':<50}{t_vbt:>9.3f}")
    print(f"{'ratio charlie / vectorbt':<50}{ratio:>9.2f}   target <= 1: {met(ratio <= 1)}")
    print(f"{'max |equity difference| / initial cash':<50}{diff:>9.2e}")


if __name__ == "__main__":
    main()
