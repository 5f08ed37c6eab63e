"""Classification and financial metrics for predicted actions, and the baselines they face.

Conventions (stated in every report). The strategy is the backtest's
(:mod:`charlie.strategy`): each action holds the backtest config's ``action_units`` (shorts
flat unless ``allow_shorts``), HOLD and UNPARSEABLE 0 units per row; a row's trade return is
units x the executable forward return (next open to the close h days on,
:mod:`charlie.evaluation.returns`). Two means per window: per trade (rows with a nonzero
position) and per row (flat rows 0). The same means over close-to-close returns are a second,
labelled figure. The sign view (``directional``, ``hit_rate``, ``mean_signed_return``,
``sharpe_like``) keeps its old meaning: BUY/STRONG_BUY +1, SELL/STRONG_SELL -1 (shorts, whatever
the backtest allows), times the close-to-close return. Sharpe-style ratios are mean / std
(ddof=1) per window, NOT annualised, since overlapping multi-day windows make sqrt(252)
scaling wrong. NaN returns (the window runs past the data) are counted and left out of the
means, never silently dropped from the rows. Intervals, nulls and paired tests are in
:mod:`charlie.evaluation.uncertainty`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from charlie import ACTIONS, UNPARSEABLE

LABELS = [*ACTIONS, UNPARSEABLE]
SIGN = {"STRONG_BUY": 1, "BUY": 1, "HOLD": 0, "SELL": -1, "STRONG_SELL": -1, UNPARSEABLE: 0}


def classification(
    truth: Sequence[str], pred: Sequence[str], truncated: Sequence[bool] | None = None
) -> dict[str, Any]:
    """Accuracy, macro-F1 over the five actions, per-class report, confusion matrix, parse rate.

    ``unparseable`` counts every row without an action; ``truncated`` the subset of them that
    ran out of generation budget before the action (``truncated``: one flag per row).
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    labels = list(ACTIONS)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, pred, labels=labels, zero_division=0
    )
    return {
        "n": len(truth),
        "accuracy": float(accuracy_score(truth, pred)),
        "macro_f1": float(f1_score(truth, pred, labels=labels, average="macro", zero_division=0)),
        "parse_rate": 1.0 - sum(p == UNPARSEABLE for p in pred) / max(len(pred), 1),
        "unparseable": sum(p == UNPARSEABLE for p in pred),
        "truncated": int(sum(bool(t) for t in truncated)) if truncated is not None else 0,
        "per_class": {
            a: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for a, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
        # rows: true action, columns: predicted action (UNPARSEABLE last)
        "confusion_matrix": {
            "labels": LABELS,
            "matrix": confusion_matrix(truth, pred, labels=LABELS).tolist(),
        },
    }


def _ratio(x: np.ndarray) -> tuple[float | None, float | None]:
    """(std with ddof=1, mean / std) of ``x``; None where undefined."""
    if x.size < 2:
        return None, None
    std = float(np.std(x, ddof=1))
    return std, float(x.mean() / std) if std > 0 else None


def trades(pred: Sequence[str], ret: np.ndarray, units: Mapping[str, float]) -> dict[str, Any]:
    """One window's strategy figures: units x ``ret`` per trade and per row (flat rows 0).

    Keys: ``trades`` (rows with a nonzero position and a known
    return), ``trade_hit_rate``, ``mean_trade_return``, ``std_trade_return``,
    ``sharpe_like_trade``, ``rows_with_return``, ``mean_row_return``, ``std_row_return``,
    ``sharpe_like_row`` (None where undefined).
    """
    pos = np.array([units[p] for p in pred], dtype="float64")
    known = ~np.isnan(ret)
    trade = pos[known & (pos != 0)] * ret[known & (pos != 0)]
    row = pos[known] * ret[known]
    trade_std, trade_ratio = _ratio(trade)
    row_std, row_ratio = _ratio(row)
    return {
        "trades": int(trade.size),
        "trade_hit_rate": float((trade > 0).mean()) if trade.size else None,
        "mean_trade_return": float(trade.mean()) if trade.size else None,
        "std_trade_return": trade_std,
        "sharpe_like_trade": trade_ratio,
        "rows_with_return": int(row.size),
        "mean_row_return": float(row.mean()) if row.size else None,
        "std_row_return": row_std,
        "sharpe_like_row": row_ratio,
    }


def financial(
    pred: Sequence[str],
    fwd: dict[int, np.ndarray],
    executable: dict[int, np.ndarray] | None = None,
    units: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Per window: the strategy's trades, and the sign view; per-action means, HOLD apart.

    Args:
        pred: The predicted action per row.
        fwd: Close-to-close forward returns per window.
        executable: Next-open-to-close returns per window (the strategy's headline figures).
        units: The strategy's units per action (:func:`charlie.strategy.row_units`).

    With ``executable`` and ``units``, each window adds ``long_trades``, ``short_trades``,
    ``missing_executable_returns``, :func:`trades` over the executable returns, and the same
    over close-to-close returns with the suffix ``_close_to_close``.
    """
    sign = np.array([SIGN[p] for p in pred], dtype="float64")
    actions = np.array(pred)
    out: dict[str, Any] = {}
    for h, ret in fwd.items():
        known = ~np.isnan(ret)
        directional = known & (sign != 0)
        signed = sign[directional] * ret[directional]
        std = float(np.std(signed, ddof=1)) if signed.size > 1 else float("nan")
        per_action = {}
        for action in LABELS:
            rows = known & (actions == action)
            per_action[action] = {
                "count": int((actions == action).sum()),
                "mean_fwd_return": float(ret[rows].mean()) if rows.any() else None,
            }
        window: dict[str, Any] = {}
        if executable is not None and units is not None:
            pos = np.array([units[p] for p in pred], dtype="float64")
            exe = executable[h]
            window = {
                "long_trades": int((pos > 0).sum()),
                "short_trades": int((pos < 0).sum()),
                "missing_executable_returns": int(np.isnan(exe).sum()),
                **trades(pred, exe, units),
                **{f"{k}_close_to_close": v for k, v in trades(pred, ret, units).items()},
            }
            for action in LABELS:
                rows = ~np.isnan(exe) & (actions == action)
                per_action[action]["mean_executable_return"] = (
                    float(exe[rows].mean()) if rows.any() else None
                )
        out[f"{h}d"] = {
            **window,
            "directional": int(directional.sum()),
            "missing_returns": int((~known).sum()),
            "hit_rate": float((signed > 0).mean()) if signed.size else None,
            "mean_signed_return": float(signed.mean()) if signed.size else None,
            "std_signed_return": std if signed.size > 1 else None,
            "sharpe_like": float(signed.mean() / std) if signed.size > 1 and std > 0 else None,
            "per_action": per_action,
            "hold": per_action["HOLD"],
        }
    return out


def window_returns(
    frame: Any, windows: Sequence[int], units: Mapping[str, float]
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], dict[str, Any]]:
    """Each window's returns from a per-sample frame, and the statistics the bootstrap measures.

    Args:
        frame: Rows with ``fwd_ret_<h>`` (close to close) and ``exec_ret_<h>`` (next open to
            close) per window.
        windows: The forward windows.
        units: The strategy's units per action (:func:`charlie.strategy.row_units`).

    Returns:
        ``fwd`` and ``exe`` (window -> float64 array), and the
        :data:`charlie.evaluation.uncertainty.Measure` per statistic: the mean executable
        return per trade and per row, and the sign view's mean signed return.
    """
    fwd = {h: frame[f"fwd_ret_{h}"].to_numpy(dtype="float64") for h in windows}
    exe = {h: frame[f"exec_ret_{h}"].to_numpy(dtype="float64") for h in windows}
    measures: dict[str, Any] = {}
    for h in windows:
        measures[f"mean_trade_return_{h}d"] = (units, exe[h], True)
        measures[f"mean_row_return_{h}d"] = (units, exe[h], False)
        measures[f"mean_signed_return_{h}d"] = (SIGN, fwd[h], True)
    return fwd, exe, measures


def mean_signed(pred: Sequence[str], ret: np.ndarray) -> float:
    """The sign view: mean sign x return over the directional rows whose return is known
    (NaN: none)."""
    sign = np.array([SIGN[p] for p in pred], dtype="float64")
    keep = ~np.isnan(ret) & (sign != 0)
    return float((sign[keep] * ret[keep]).mean()) if keep.any() else float("nan")


def baselines(
    truth: Sequence[str],
    model_pred: Sequence[str],
    train_labels: Sequence[str],
    momentum: np.ndarray,
) -> dict[str, list[str]]:
    """The model's and the baselines' actions on exactly the model's rows.

    Random actions at the model's frequencies are not one draw here: they are the permutation
    nulls of :func:`charlie.evaluation.uncertainty.assess`.
    """
    majority = Counter(train_labels).most_common(1)[0][0]
    return {
        "model": list(model_pred),
        f"majority ({majority})": [majority] * len(truth),
        "always BUY": ["BUY"] * len(truth),
        "teacher (thesis labels)": list(truth),
        "momentum 20d sign": ["BUY" if m > 0 else "SELL" if m < 0 else "HOLD" for m in momentum],
    }


def naive(strategies: dict[str, list[str]]) -> list[str]:
    """The baselines a paired test may pick: all but the model and the teacher's labels."""
    return [name for name in strategies if name not in ("model", "teacher (thesis labels)")]
