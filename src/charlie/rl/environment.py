"""The trading environment: one episode per (ticker, as-of date) prompt of the dataset.

An episode is a prompt the model answers once; its outcome is what the answer's action earns
under the backtest's execution convention (DESIGN.md): decided at the close of t, filled at the
next open, held to the close of t + h, on the backtest's ``price_basis``
(:func:`charlie.evaluation.returns.executable_returns`, the evaluation's own return). Beside
it, each episode carries what was known at t only: the ticker's trailing volatility (the
sample standard deviation of its last ``vol_window`` daily log returns on adjusted closes,
scaled by sqrt(h) to the horizon), which both normalises the reward and ranks the curriculum.

Nothing in an episode reads a price after t + h: the return stops at the bar t + h, the
volatility at t. ``reward_end`` is the date of bar t + h, which :func:`check_reward_window`
holds against the next split, so a training reward never reads validation or test prices.
An episode whose window runs past the data (or whose ticker has too little history for the
volatility) has no outcome: it is dropped and counted, never given a partial window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from charlie.errors import CharlieError
from charlie.evaluation.returns import executable_returns

COLUMNS = ("uid", "ticker", "as_of_date", "prompt", "action")
"""The dataset columns an episode keeps (``action``: the thesis label, for the reports)."""


@dataclass(frozen=True)
class Episodes:
    """The episodes of one split, and how many rows had no outcome (by reason)."""

    frame: pd.DataFrame
    """COLUMNS + forward_return, volatility, reward_end (ISO date of bar t + h)."""
    dropped: dict[str, int]


def trailing_volatility(adj: np.ndarray, pos: np.ndarray, window: int) -> np.ndarray:
    """Per position t, the sample std (ddof=1) of the ``window`` daily log returns ending at t
    (bars t - window .. t); NaN with fewer bars or non-positive prices."""
    with np.errstate(invalid="ignore", divide="ignore"):
        logret = np.diff(np.log(adj))
    out = np.full(len(pos), np.nan)
    for i, p in enumerate(pos):
        if p >= window:
            chunk = logret[p - window : p]  # the returns into bars p-window+1 .. p
            if np.isfinite(chunk).all():
                out[i] = float(np.std(chunk, ddof=1))
    return out


def build_episodes(
    rows: Sequence[Mapping[str, Any]],
    prices: Mapping[str, pd.DataFrame],
    *,
    horizon: int,
    basis: str = "adjusted",
    vol_window: int = 20,
) -> Episodes:
    """The episodes of ``rows`` (dicts with :data:`COLUMNS`) over ``prices`` (per ticker, the
    price files' columns, sorted by date).

    Args:
        horizon: h, the trading days the action is held (the reward's window).
        basis: The backtest's ``price_basis`` (``adjusted`` or ``raw``).
        vol_window: Daily returns in the trailing volatility.
    """
    if horizon < 1 or vol_window < 2:
        raise CharlieError(
            f"horizon must be >= 1 and vol_window >= 2 (got {horizon}, {vol_window})."
        )
    frame = pd.DataFrame({c: [r[c] for r in rows] for c in COLUMNS})
    n = len(frame)
    ret, vol, end = np.full(n, np.nan), np.full(n, np.nan), np.full(n, None, dtype=object)
    dropped = {"no_prices": 0, "window_past_data": 0, "short_history": 0}
    for ticker, index in frame.groupby("ticker", sort=False).indices.items():
        bars = prices.get(ticker)
        if bars is None or bars.empty:
            dropped["no_prices"] += len(index)
            continue
        dates = frame["as_of_date"].to_numpy()[index]
        days = bars["date"].to_numpy(dtype="datetime64[D]")
        pos = np.searchsorted(days, np.array(dates, dtype="datetime64[D]"), side="right") - 1
        ret[index] = executable_returns(bars, list(dates), [horizon], basis)[horizon]
        adj = bars["adj_close"].to_numpy(dtype="float64")
        vol[index] = trailing_volatility(adj, pos, vol_window) * np.sqrt(horizon)
        ahead = pos + horizon
        inside = (pos >= 0) & (ahead < len(days))
        end[index[inside]] = [str(d) for d in days[ahead[inside]]]
    frame["forward_return"], frame["volatility"], frame["reward_end"] = ret, vol, end
    no_window = np.isnan(ret)
    short = ~no_window & ~(vol > 0)
    known = frame["ticker"].isin([t for t in prices if not prices[t].empty]).to_numpy()
    dropped["window_past_data"] = int((no_window & known).sum())
    dropped["short_history"] = int((short & known).sum())
    kept = frame[~no_window & ~short].reset_index(drop=True)
    return Episodes(kept, {k: v for k, v in dropped.items() if v})


def check_reward_window(train: pd.DataFrame, heldout_start: str | None, horizon: int) -> None:
    """Refuse training episodes whose reward window reaches the next split.

    A reward over h days after t reads prices up to bar t + h; for a training episode that bar
    must fall before ``heldout_start`` (the first validation, else test, date), or the policy
    is trained on held-out prices (the leakage audit of the dataset, extended to rewards).

    Raises:
        CharlieError: The latest training reward ends on or after ``heldout_start``.
    """
    if heldout_start is None or train.empty:
        return
    late = train[train["reward_end"] >= heldout_start]
    if late.empty:
        return
    worst = late.sort_values("reward_end").iloc[-1]
    raise CharlieError(
        f"the {horizon}-day reward of {len(late)} training episode(s) reads prices from the "
        f"held-out period (e.g. {worst['uid']}: its window ends {worst['reward_end']}, the "
        f"held-out split starts {heldout_start}). Use a reward horizon no longer than the "
        "dataset's purge (the evaluate config's longest forward window) plus its embargo "
        "(params.yaml dataset.embargo_days), or rebuild the dataset with a longer one."
    )
