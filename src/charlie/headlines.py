"""Each stage's headline: the few numbers runs are compared on, as DVC metrics.

Every stage writes a detailed report (``parse_report.json``, ``dataset_card.json``,
``manifest.json``, ``eval_metrics.json``, ``<stem>_metrics.json``: what a person or the next
stage reads) and, beside it, ``<name>_headline.json``: a flat object of at most eight
numbers with keys free of spaces, which dvc.yaml declares as the stage's metrics. So
``dvc metrics show`` and ``dvc exp show`` stay readable at a terminal's width, and the
detail (a confusion matrix, the backtest's config, per-ticker P&L) stays out of them.

Each function is pure: the detailed report in, the headline out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SUFFIX = "_headline.json"


def headline_path(detail: Path | str, name: str) -> Path:
    """``<name>_headline.json`` beside the detailed report ``detail``."""
    return Path(detail).with_name(f"{name}{SUFFIX}")


def write_headline(path: Path | str, headline: dict[str, Any]) -> None:
    """The headline as JSON (NaN written as null: DVC and JSON readers agree on it)."""
    clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in headline.items()}
    Path(path).write_text(json.dumps(clean, indent=2) + "\n", encoding="utf-8")


def parse(report: dict[str, Any]) -> dict[str, Any]:
    """Theses in, records out, and what was lost on the way."""
    t = report["totals"]
    keys = ("theses_seen", "records", "rejects", "duplicates_collapsed", "files_failed")
    return {k: t[k] for k in keys}


def dataset(card: dict[str, Any]) -> dict[str, Any]:
    """Rows per split, and how many the purge and the embargo took."""
    rows, purged, dropped = card["records"], card["purged"], card["dropped"]
    return {
        "train": rows.get("train", 0),
        "validation": rows.get("validation", 0),
        "test": rows.get("test", 0),
        "purged": sum(purged.values()) + dropped.get("embargo", 0),
    }


def train(metrics: dict[str, Any]) -> dict[str, Any]:
    """Losses, steps and time of a training run (its final metrics)."""
    keys = {"train_loss": "train_loss", "eval_loss": "eval_loss", "global_step": "steps",
            "train_runtime": "train_seconds"}  # fmt: skip
    return {short: metrics[key] for key, short in keys.items() if key in metrics}


def evaluate(info: dict[str, Any]) -> dict[str, Any]:
    """Accuracy with its interval, macro-F1, the parse rate, the edge over the strongest
    baseline, the rotation null's p-value and the 1-day executable trade return."""
    c = info["classification"]
    low, high = (info["baselines"]["model"].get("accuracy_ci95") or [None, None])[:2]
    out: dict[str, Any] = {"accuracy": c["accuracy"], "accuracy_ci95_lo": low,
                           "accuracy_ci95_hi": high, "macro_f1": c["macro_f1"],
                           "parse_rate": c["parse_rate"]}  # fmt: skip
    paired = info.get("paired", {}).get("accuracy")
    if paired:
        out["edge_over_best_baseline"] = paired["difference"]
    rotate = info.get("null", {}).get("rotate_within_ticker", {}).get("accuracy")
    if rotate:
        out["p_rotate_accuracy"] = rotate["p_value"]
    first = next(iter(info.get("financial", {}).values()), None)
    if first is not None:
        out["mean_trade_return_1d"] = first.get("mean_trade_return")
    return out


def backtest(metrics: dict[str, Any]) -> dict[str, Any]:
    """The portfolio after costs, how sure its Sharpe is, and the exposure-matched benchmark."""
    s, inference = metrics["strategy"], metrics["sharpe_inference"]["strategy"]
    return {
        "total_return": s["total_return"],
        "sharpe": s["sharpe"],
        "sharpe_ci_lo": inference.get("ci_low"),
        "dsr": inference.get("deflated_sharpe"),
        "max_drawdown": s["max_drawdown"],
        "trades": s["n_trades"],
        "costs_paid": metrics["costs"]["strategy"]["total"],
        "matched_benchmark_return": metrics["benchmark_exposure_matched"]["total_return"],
    }


def compare(info: dict[str, Any]) -> dict[str, Any]:
    """Both accuracies, the candidate's edge in accuracy (McNemar's p), in mean return per row
    over the first forward window, in Sharpe after costs (its p) and in total return."""
    ev = info["evaluation"]
    base, cand = ev["baseline"], ev["candidate"]
    out: dict[str, Any] = {
        f"{base}_accuracy": ev["models"][base]["classification"]["accuracy"],
        f"{cand}_accuracy": ev["models"][cand]["classification"]["accuracy"],
    }
    acc = ev["paired"].get("accuracy")
    if acc:
        out["accuracy_difference"] = acc["difference"]
        out["accuracy_mcnemar_p"] = acc.get("mcnemar_p")
    window = next(iter(ev["models"][base]["trading"]), None)  # "1d"
    row = ev["paired"].get(f"mean_row_return_{window}")
    if row:
        out[f"mean_row_return_{window}_difference"] = row["difference"]
    pf = info.get("portfolio")
    if pf:
        out["sharpe_difference"] = pf["paired"]["sharpe"]["difference"]
        out["sharpe_difference_p"] = pf["paired"]["sharpe"]["bootstrap_p"]
        a, b = pf["models"][cand]["total_return"], pf["models"][base]["total_return"]
        out["total_return_difference"] = None if a is None or b is None else a - b
    return out
