"""Classification and financial metrics for predicted actions, and the baselines they face.

Conventions (stated in every report): directional predictions are BUY/STRONG_BUY long (+1)
and SELL/STRONG_SELL short (-1); the signed return is that sign times the forward return; the
Sharpe-style ratio is mean / std (ddof=1) of signed returns per window, NOT annualised, since
overlapping multi-day windows make sqrt(252) scaling wrong; HOLD and UNPARSEABLE rows take no
position and are reported separately. NaN forward returns (the window runs past the data) are
counted and left out of the means, never silently dropped from the rows. Intervals, nulls
and paired tests are in :mod:`charlie.evaluation.uncertainty`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
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


def financial(pred: Sequence[str], fwd: dict[int, np.ndarray]) -> dict[str, Any]:
    """Per window: hit rate, mean/std/ratio of signed returns, per-action means, HOLD apart."""
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
        out[f"{h}d"] = {
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


def mean_signed(pred: Sequence[str], ret: np.ndarray) -> float:
    """Mean signed return over the directional rows whose return is known (NaN: none)."""
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
