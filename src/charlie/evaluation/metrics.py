"""Classification and financial metrics for predicted actions, and the baselines they face.

Conventions (stated in every report): directional predictions are BUY/STRONG_BUY long (+1)
and SELL/STRONG_SELL short (-1); the signed return is that sign times the forward return; the
Sharpe-style ratio is mean / std (ddof=1) of signed returns per window, NOT annualised, since
overlapping multi-day windows make sqrt(252) scaling wrong; HOLD and UNPARSEABLE rows take no
position and are reported separately. NaN forward returns (the window runs past the data) are
counted and left out of the means, never silently dropped from the rows. Intervals are
percentile bootstraps (seeded) over rows.
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
    sign = np.array([SIGN[p] for p in pred], dtype="float64")
    keep = ~np.isnan(ret) & (sign != 0)
    return float((sign[keep] * ret[keep]).mean()) if keep.any() else float("nan")


def bootstrap(
    truth: Sequence[str], pred: Sequence[str], ret: np.ndarray, *, samples: int, seed: int
) -> dict[str, list[float]]:
    """95% percentile intervals for accuracy and for the mean signed return."""
    rng = np.random.default_rng(seed)
    t, p = np.array(truth), np.array(pred)
    sign = np.array([SIGN[x] for x in pred], dtype="float64")
    n = len(t)
    idx = rng.integers(0, n, size=(samples, n))
    acc = (t[idx] == p[idx]).mean(axis=1)
    signed = sign[idx] * ret[idx]
    active = (sign[idx] != 0) & ~np.isnan(ret[idx])
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(active, signed, 0.0).sum(axis=1) / active.sum(axis=1)
    means = means[~np.isnan(means)]

    def interval(x: np.ndarray) -> list[float]:
        return [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))] if x.size else []

    return {"accuracy": interval(acc), "mean_signed_return": interval(means)}


def baselines(
    truth: Sequence[str],
    model_pred: Sequence[str],
    train_labels: Sequence[str],
    momentum: np.ndarray,
    *,
    seed: int,
) -> dict[str, list[str]]:
    """The baselines' actions on exactly the model's rows."""
    majority = Counter(train_labels).most_common(1)[0][0]
    freq = Counter(model_pred)
    rng = np.random.default_rng(seed)
    choices = list(freq)
    weights = np.array([freq[c] for c in choices], dtype="float64")
    random_actions = list(rng.choice(choices, size=len(truth), p=weights / weights.sum()))
    return {
        "model": list(model_pred),
        f"majority ({majority})": [majority] * len(truth),
        "always BUY": ["BUY"] * len(truth),
        "teacher (thesis labels)": list(truth),
        "momentum 20d sign": ["BUY" if m > 0 else "SELL" if m < 0 else "HOLD" for m in momentum],
        "random at the model's frequencies": [str(a) for a in random_actions],
    }
