"""The backtest's inputs: the eval CSV's predictions checked, and date x ticker arrays built.

:func:`prepare_predictions` normalises the predictions, :func:`price_window` says which bars
to fetch for them, and :func:`build_panel` aligns both on one trading calendar as the
:class:`Panel` the engine (``charlie.backtest.engine``) simulates: the engine never sees a
date or a ticker.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from charlie import ACTIONS, UNPARSEABLE
from charlie.backtest.config import BacktestConfig
from charlie.errors import CharlieError

REQUIRED_COLUMNS = ("ticker", "as_of_date", "pred_action")
"""The eval CSV's columns a backtest reads."""
LABELS = (*ACTIONS, UNPARSEABLE)
"""Every prediction a backtest accepts; :attr:`Panel.actions` indexes into it."""
LOOKBACK_DAYS = 7
"""Calendar days of bars fetched before the first decision (it may fall on a holiday)."""
FILL_MARGIN_DAYS = 10
MAX_GAP_DAYS = 366  # predictions further than this from all the others are strays
"""Calendar days of bars fetched after the last decision, for its next-open fill."""


def read_eval_csv(path: Path) -> pd.DataFrame:
    """The eval CSV as a frame of strings, with one sentence if it is missing or unreadable."""
    if not path.is_file():
        raise CharlieError(f"eval CSV {path} does not exist; run `charlie evaluate` first.")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise CharlieError(f"eval CSV {path} is empty.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0].rstrip(".")
        raise CharlieError(f"eval CSV {path} is not a readable CSV: {reason}.") from None


def prepare_predictions(frame: pd.DataFrame, source: str = "the eval CSV") -> pd.DataFrame:
    """Check and normalise an eval CSV's predictions: ticker, as_of_date, pred_action.

    Tickers and actions are stripped and upper-cased; a blank action is UNPARSEABLE.

    Raises:
        CharlieError: A required column is missing, there is no row, or a date or an
            action is not allowed (the sentence names the CSV line).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise CharlieError(
            f"{source} lacks the column(s) {', '.join(missing)}; a backtest needs "
            f"{', '.join(REQUIRED_COLUMNS)} as `charlie evaluate` writes them."
        )
    if frame.empty:
        raise CharlieError(f"{source} holds no prediction.")
    tickers = frame["ticker"].astype("string").str.strip().str.upper()
    dates = pd.to_datetime(frame["as_of_date"].astype("string"), format="%Y-%m-%d", errors="coerce")
    actions = frame["pred_action"].astype("string").str.strip().str.upper().fillna("")
    actions = actions.mask(actions == "", UNPARSEABLE)
    allowed = LABELS
    for bad, what in (
        (tickers.isna() | (tickers == ""), "a ticker"),
        (dates.isna(), "an as_of_date like 2025-01-31"),
        (~actions.isin(allowed), f"a pred_action in {', '.join(allowed)}"),
    ):
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            value = frame.iloc[row][["ticker", "as_of_date", "pred_action"]].tolist()
            raise CharlieError(
                f"{source} line {row + 2} ({', '.join(map(str, value))}) lacks {what}."
            )
    return pd.DataFrame(
        {
            "ticker": tickers.astype(str).to_numpy(),
            "as_of_date": dates.to_numpy(dtype="datetime64[ns]"),
            "pred_action": actions.astype(str).to_numpy(),
        }
    )


def parse_rate_problem(
    predictions: pd.DataFrame,
    min_parse_rate: float,
    source: str = "the eval CSV",
    truncated: pd.Series | None = None,
) -> str | None:
    """Why these predictions are not worth a backtest (a clause, no advice), or None.

    Refused: no prediction with an action at all (every one UNPARSEABLE, so nothing would be
    traded), or a share of parsed actions below ``min_parse_rate``; ``--force`` overrides.

    Args:
        predictions: From :func:`prepare_predictions`.
        min_parse_rate: The backtest config's gate.
        source: The CSV, as the sentence names it.
        truncated: The eval CSV's ``truncated`` column (strings), when it has one.
    """
    n = len(predictions)
    unparseable = int((predictions["pred_action"] == UNPARSEABLE).sum())
    rate = 1.0 - unparseable / n if n else 0.0
    cut = ""
    if truncated is not None:
        count = int(truncated.astype(str).str.strip().str.lower().isin(["true", "1"]).sum())
        cut = f", {count:,} of them truncated by the generation budget"
    if unparseable == n:
        return (
            f"{source} has no parseable action ({n:,} of {n:,} predictions are UNPARSEABLE"
            f"{cut}), so a backtest would trade nothing"
        )
    if rate < min_parse_rate:
        return (
            f"{source} has a parse rate of {rate:.3f}, below min_parse_rate {min_parse_rate:g} "
            f"({unparseable:,} of {n:,} predictions are UNPARSEABLE{cut})"
        )
    return None


def drop_isolated(predictions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, dropped): predictions dated more than ``MAX_GAP_DAYS`` from the rest are dropped.

    The dates split into runs wherever two consecutive ones are further apart than that; the
    run with the most predictions is the backtest, the rest are strays (one row dated 1990
    would otherwise stretch the run, and the benchmark, over 35 years).
    """
    dates = np.sort(predictions["as_of_date"].unique())
    gaps = np.flatnonzero(np.diff(dates) > np.timedelta64(MAX_GAP_DAYS, "D"))
    if not gaps.size:
        return predictions, predictions.iloc[:0]
    bounds = np.concatenate([[0], gaps + 1, [len(dates)]])
    runs = [(dates[a], dates[b - 1]) for a, b in itertools.pairwise(bounds)]
    counts = [predictions["as_of_date"].between(lo, hi).sum() for lo, hi in runs]
    lo, hi = runs[int(np.argmax(counts))]
    keep = predictions["as_of_date"].between(lo, hi)
    return predictions.loc[keep].reset_index(drop=True), predictions.loc[~keep]


def price_window(predictions: pd.DataFrame) -> dict[str, tuple[dt.date, dt.date]]:
    """The bars to fetch (``load_all_prices``'s ``wanted``): every ticker over the whole period.

    Every ticker needs the whole period, not just its own dates: a position is held (and
    marked) after its last prediction.
    """
    first = predictions["as_of_date"].min().date() - dt.timedelta(days=LOOKBACK_DAYS)
    last = predictions["as_of_date"].max().date() + dt.timedelta(days=FILL_MARGIN_DAYS)
    return {ticker: (first, last) for ticker in sorted(predictions["ticker"].unique())}


@dataclass(frozen=True)
class Panel:
    """The engine's inputs: date x ticker arrays over the backtest calendar.

    Row 0 is the trading day of the first decision; the last row is the first trading day
    after the last decision (where it is filled), when the prices reach it.
    """

    dates: pd.DatetimeIndex
    tickers: list[str]
    open: np.ndarray
    close: np.ndarray
    decisions: np.ndarray
    """Units decided at each row's close; NaN keeps the current target (HOLD, no prediction)."""
    actions: np.ndarray
    """Index into :data:`LABELS` of the prediction behind each decision; -1: none."""
    before_prices: int = 0
    """Predictions dropped because their ticker has no bar on or before their date."""


def build_panel(
    predictions: pd.DataFrame, frames: dict[str, pd.DataFrame], config: BacktestConfig
) -> Panel:
    """Align predictions and price frames on one trading calendar (the union of their dates).

    A prediction dated on a day without bars counts at the close of the trading day before
    it; two predictions landing on one (row, ticker) keep the later one.
    """
    tickers = sorted(predictions["ticker"].unique())
    lacking = [t for t in tickers if t not in frames or frames[t].empty]
    if lacking:
        raise CharlieError(f"no prices for {', '.join(lacking)}; check the prices section.")
    bars = {t: _bars(frames[t], config.price_basis) for t in tickers}
    # A prediction dated before its ticker's first bar has no price to decide on.
    first_bar = predictions["ticker"].map({t: b.index.min() for t, b in bars.items()})
    priced = predictions["as_of_date"] >= first_bar
    predictions = predictions.loc[priced]
    if predictions.empty:
        raise CharlieError("every prediction is dated before its ticker's first price bar.")
    calendar = pd.DatetimeIndex(
        np.unique(np.concatenate([b.index.to_numpy() for b in bars.values()]))
    )
    first, last = predictions["as_of_date"].min(), predictions["as_of_date"].max()
    start = max(int(calendar.searchsorted(first, side="right")) - 1, 0)
    end = min(int(calendar.searchsorted(last, side="right")), len(calendar) - 1)
    dates = calendar[start : end + 1]

    open_ = np.column_stack([bars[t]["open"].reindex(dates).to_numpy() for t in tickers])
    close = np.column_stack([bars[t]["close"].reindex(dates).to_numpy() for t in tickers])

    units = config.units()
    units[UNPARSEABLE] = units["HOLD"]
    placed = predictions.assign(
        row=np.clip(dates.searchsorted(predictions["as_of_date"], side="right") - 1, 0, None),
        col=pd.Index(tickers).get_indexer(predictions["ticker"]),
    )
    placed = placed.sort_values("as_of_date", kind="stable").drop_duplicates(
        ["row", "col"], keep="last"
    )
    decisions = np.full(open_.shape, np.nan)
    actions = np.full(open_.shape, -1, dtype=np.int8)
    value = placed["pred_action"].map(lambda a: np.nan if units[a] is None else units[a])
    decisions[placed["row"], placed["col"]] = value.to_numpy(dtype=np.float64)
    actions[placed["row"], placed["col"]] = placed["pred_action"].map(LABELS.index).to_numpy()
    return Panel(dates, tickers, open_, close, decisions, actions, int((~priced).sum()))


def _bars(frame: pd.DataFrame, basis: str) -> pd.DataFrame:
    """Open and close on the chosen basis, indexed by date; unusable prices become NaN."""
    frame = frame.drop_duplicates("date", keep="last")
    open_ = frame["open"].to_numpy(dtype=np.float64)
    close = frame["close"].to_numpy(dtype=np.float64)
    if basis == "adjusted":
        adj = frame["adj_close"].to_numpy(dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            open_ = open_ * adj / close
        close = adj
    out = pd.DataFrame(
        {"open": open_, "close": close}, index=pd.DatetimeIndex(frame["date"]).normalize()
    )
    return out.where(np.isfinite(out) & (out > 0))
