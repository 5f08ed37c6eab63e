"""The evaluation's outputs: the per-sample CSV, generations, metrics JSON, summary and plot."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pandas as pd

from charlie.evaluation import metrics as m
from charlie.io import atomic_outputs

CONVENTIONS = [
    "Forward return over h trading days: adj_close(t+h) / adj_close(t) - 1, t being the last bar "
    "on or before the record's date; NaN when the window runs past the data (counted, not dropped).",
    "Directional predictions: BUY/STRONG_BUY long (+1), SELL/STRONG_SELL short (-1); HOLD and "
    "UNPARSEABLE take no position and are reported apart.",
    "Sharpe-style ratio: mean / std (ddof=1) of signed forward returns, per window, not annualised "
    "(overlapping multi-day windows make sqrt(252) scaling wrong).",
    "Baselines act on exactly the model's rows; the majority class is the training split's.",
    "Intervals: 95% percentile bootstrap over rows, seeded.",
]


def compute(cfg: Any, frame: pd.DataFrame, momentum: np.ndarray, train_labels: list[str]) -> dict:
    """Every metric of the report, as a JSON-ready dict."""
    truth, pred = list(frame["true_action"]), list(frame["pred_action"])
    windows = cfg.forward_windows
    fwd = {h: frame[f"fwd_ret_{h}"].to_numpy(dtype="float64") for h in windows}
    first = fwd[windows[0]]
    compare = {}
    for name, actions in m.baselines(
        truth, pred, train_labels or truth, momentum, seed=cfg.seed
    ).items():
        ci = m.bootstrap(truth, actions, first, samples=cfg.bootstrap_samples, seed=cfg.seed)
        compare[name] = {
            "accuracy": float(np.mean([a == t for a, t in zip(actions, truth, strict=True)])),
            "accuracy_ci95": ci["accuracy"],
            f"mean_signed_return_{windows[0]}d": m.mean_signed(actions, first),
            f"mean_signed_return_{windows[0]}d_ci95": ci["mean_signed_return"],
            **{f"mean_signed_return_{h}d": m.mean_signed(actions, fwd[h]) for h in windows[1:]},
        }
    return {
        "split": cfg.split,
        "rows": len(frame),
        "classification": m.classification(truth, pred),
        "financial": m.financial(pred, fwd),
        "baselines": compare,
        "conventions": CONVENTIONS,
    }


def headline(info: dict) -> dict[str, Any]:
    """The numbers runs are compared on: classification, trading per window, baselines' accuracy."""
    c = info["classification"]
    out: dict[str, Any] = {
        k: c[k] for k in ("n", "accuracy", "macro_f1", "parse_rate", "unparseable")
    }
    for h, window in info["financial"].items():
        out.update(
            {f"{k}_{h}": window[k] for k in ("hit_rate", "mean_signed_return", "sharpe_like")}
        )
    for name, baseline in info["baselines"].items():
        if name != "model":
            slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
            out[f"baseline_{slug}_accuracy"] = baseline["accuracy"]
    return out


def summary_markdown(info: dict, windows: list[int]) -> str:
    c = info["classification"]
    lines = [
        f"# Evaluation on the {info['split']} split ({info['rows']} rows)",
        "",
        f"Accuracy **{c['accuracy']:.3f}**, macro-F1 {c['macro_f1']:.3f}, parse rate "
        f"{c['parse_rate']:.3f} ({c['unparseable']} unparseable).",
        "",
        "| action | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for action, r in c["per_class"].items():
        lines.append(
            f"| {action} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |"
        )
    lines += ["", "## Trades implied by the actions", "",
              "| window | directional | hit rate | mean signed | std | mean/std | missing |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip

    def fmt(x: float | None, spec: str = ".4f") -> str:
        return "-" if x is None else format(x, spec)

    for h in windows:
        f = info["financial"][f"{h}d"]
        lines.append(
            f"| {h}d | {f['directional']} | {fmt(f['hit_rate'], '.3f')} | {fmt(f['mean_signed_return'])} | "
            f"{fmt(f['std_signed_return'])} | {fmt(f['sharpe_like'], '.3f')} | {f['missing_returns']} |"
        )
    h0 = windows[0]
    lines += ["", f"## Against baselines (same rows; 95% bootstrap intervals; returns over {h0}d)", "",
              "| strategy | accuracy | 95% CI | mean signed return | 95% CI |", "|---|---|---|---|---|"]  # fmt: skip
    for name, b in info["baselines"].items():
        acc_ci = b["accuracy_ci95"]
        ret_ci = b[f"mean_signed_return_{h0}d_ci95"]
        lines.append(
            f"| {name} | {b['accuracy']:.3f} | {acc_ci[0]:.3f} .. {acc_ci[1]:.3f} | "
            f"{b[f'mean_signed_return_{h0}d']:.5f} | "
            + (f"{ret_ci[0]:.5f} .. {ret_ci[1]:.5f} |" if ret_ci else "- |")
        )
    lines += ["", "## Conventions", "", *[f"- {c}" for c in info["conventions"]], ""]
    return "\n".join(lines)


def confusion_png(info: dict, path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = info["classification"]["confusion_matrix"]
    matrix = np.array(cm["matrix"])
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(cm["labels"])), cm["labels"], rotation=35, ha="right")
    ax.set_yticks(range(len(cm["labels"])), cm["labels"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("thesis label")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black")  # fmt: skip
    acc = info["classification"]["accuracy"]
    ax.set_title(f"Confusion matrix, {info['split']} split (accuracy {acc:.3f})")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def write_outputs(cfg: Any, frame: pd.DataFrame, texts: list[str], momentum: np.ndarray,
                  train_labels: list[str]) -> dict:  # fmt: skip
    """Write every output beside ``cfg.out``, atomically and together."""
    info = compute(cfg, frame, momentum, train_labels)
    out = cfg.out
    paths = [out, out.with_name("eval_generations.jsonl"), out.with_name("eval_metrics.json"),
             out.with_name("eval_summary.md"), out.with_name("confusion_matrix.png")]  # fmt: skip
    with atomic_outputs(*paths) as (csv, gen, met, md, png):
        frame.to_csv(csv, index=False)
        gen.write_text("".join(json.dumps({"uid": u, "generated": t}, ensure_ascii=False) + "\n"
                               for u, t in zip(frame["uid"], texts, strict=True)), encoding="utf-8")  # fmt: skip
        met.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        md.write_text(summary_markdown(info, cfg.forward_windows), encoding="utf-8")
        confusion_png(info, png)
    return info
