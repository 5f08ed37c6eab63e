"""The evaluation's outputs: the per-sample CSV, generations, metrics JSON, summary and plot.

Rendering and writing only: every number in them comes from
:func:`charlie.evaluation.core.compute_metrics`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from charlie import UNPARSEABLE, headlines
from charlie.headlines import headline_path, write_headline
from charlie.io import atomic_outputs


def summary_markdown(info: dict[str, Any], windows: Sequence[int]) -> str:
    """``eval_summary.md``: the metrics as tables, then the conventions."""
    c = info["classification"]
    lines = [
        f"# Evaluation on the {info['split']} split ({info['rows']} rows)",
        "",
        f"Accuracy **{c['accuracy']:.3f}**, macro-F1 {c['macro_f1']:.3f}, parse rate "
        f"{c['parse_rate']:.3f} ({c['unparseable']} unparseable, of which "
        f"{c.get('truncated', 0)} truncated: they reached max_new_tokens before the action).",
        "",
        *_generation_lines(info.get("generation") or {}),
        "| action | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for action, r in c["per_class"].items():
        lines.append(
            f"| {action} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |"
        )
    strategy = info.get("strategy", {})
    units = strategy.get("units", {})
    lines += ["", "## Trades implied by the actions", "",
              f"The backtest's strategy (`{strategy.get('config', '?')}`): "
              + ", ".join(f"{a} {v:+g}" if v else f"{a} 0" for a, v in units.items() if a != UNPARSEABLE)
              + f" units ({'shorts allowed' if strategy.get('allow_shorts') else 'long-only'}; "
              "HOLD and UNPARSEABLE 0 per row). Returns are executable: from the next open to "
              "the close h days on, as the backtest fills; close to close is the second figure.",
              "",
              "| window | trades | hit rate | mean per trade | mean/std | mean per row | "
              "per trade, close to close | per row, close to close | missing |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def fmt(x: float | None, spec: str = ".4f") -> str:
        return "-" if x is None or x != x else format(x, spec)  # None or NaN: undefined

    for h in windows:
        f = info["financial"][f"{h}d"]
        if "mean_trade_return" not in f:
            continue
        lines.append(
            f"| {h}d | {f['trades']} | {fmt(f['trade_hit_rate'], '.3f')} | "
            f"{fmt(f['mean_trade_return'])} | {fmt(f['sharpe_like_trade'], '.3f')} | "
            f"{fmt(f['mean_row_return'])} | {fmt(f['mean_trade_return_close_to_close'])} | "
            f"{fmt(f['mean_row_return_close_to_close'])} | {f['missing_executable_returns']} |"
        )
    lines += ["", "Sign view (its old meaning): BUY/STRONG_BUY +1, SELL/STRONG_SELL -1 whatever "
              "the backtest allows, times the close-to-close return.", "",
              "| window | directional | hit rate | mean signed | std | mean/std | missing |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for h in windows:
        f = info["financial"][f"{h}d"]
        lines.append(
            f"| {h}d | {f['directional']} | {fmt(f['hit_rate'], '.3f')} | {fmt(f['mean_signed_return'])} | "
            f"{fmt(f['std_signed_return'])} | {fmt(f['sharpe_like'], '.3f')} | {f['missing_returns']} |"
        )
    h0 = windows[0]
    trade_key = f"mean_trade_return_{h0}d"
    lines += ["", f"## Against baselines (same rows, same strategy; 95% block-bootstrap intervals over dates; returns over {h0}d)", "",
              "| strategy | accuracy | 95% CI | mean per trade (executable) | 95% CI | mean signed (sign view) | 95% CI |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip

    def span(ci: list[float], spec: str) -> str:
        return f"{ci[0]:{spec}} .. {ci[1]:{spec}} |" if ci else "- |"

    for name, b in info["baselines"].items():
        ret_ci = b[f"mean_signed_return_{h0}d_ci95"]
        lines.append(
            f"| {name} | {fmt(b['accuracy'], '.3f')} | {span(b['accuracy_ci95'], '.3f')} "
            + (f"{fmt(b[trade_key], '.5f')} | {span(b[f'{trade_key}_ci95'], '.5f')} "
               if trade_key in b else "- | - | ")
            + f"{fmt(b[f'mean_signed_return_{h0}d'], '.5f')} | {span(ret_ci, '.5f')}"
        )  # fmt: skip
    if RANDOM_NOTE in info["baselines"].get("random at the model's frequencies", {}).get(
        "interval", ""
    ):
        lines += ["", f"The random row is the {RANDOM_NOTE}: its range is where chance lands."]
    lines += _edge_lines(info, windows)
    lines += ["", "## Conventions", "", *[f"- {c}" for c in info["conventions"]], ""]
    return "\n".join(lines)


RANDOM_NOTE = "central 95% of the within-ticker shuffle null"


def _edge_lines(info: dict[str, Any], windows: Sequence[int]) -> list[str]:
    """Is the edge real: the bootstrap's settings, the nulls' p-values, the paired tests."""
    if "null" not in info:
        return []
    b, null = info["bootstrap"], info["null"]

    def p(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    lines = ["", "## Is the edge real?", "",
             f"Intervals: stationary block bootstrap over {b['dates']} dates (whole dates, every "
             f"ticker of a date together), mean block length **{b['block_length']}** dates, "
             f"{b['samples']} resamples; {b['truncated_rows_flat']} truncated rows hold no "
             f"position and count as wrong in every interval and test.", "",
             f"Nulls: the model's own predictions shuffled across dates within each ticker, and "
             f"rotated in time within each ticker, {null['permutations']} permutations each "
             f"(truncated rows kept in place, flat). p = the probability that random actions at "
             f"the model's own frequencies do as well.", "",
             "| statistic | model | shuffle null mean | p (shuffle) | rotation null mean | p (rotation) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    if b["dates"] < 4 * b["block_length"]:
        lines[5:5] = [f"Only {b['dates']} dates for blocks of mean length {b['block_length']}: "
                      f"few independent blocks, so the intervals are rough.", ""]  # fmt: skip
    keys = ["accuracy", *[f"{stat}_{h}d" for h in windows
                          for stat in ("mean_trade_return", "mean_row_return", "mean_signed_return")]]  # fmt: skip
    shuffle, rotate = null["shuffle_within_ticker"], null["rotate_within_ticker"]
    keys = [k for k in keys if k in shuffle]
    for key in keys:
        s, r = shuffle[key], rotate[key]
        obs = "-" if s["observed"] is None else f"{s['observed']:.4g}"
        s_mean = "-" if s["null_mean"] is None else f"{s['null_mean']:.4g}"
        r_mean = "-" if r["null_mean"] is None else f"{r['null_mean']:.4g}"
        lines.append(f"| {key} | {obs} | {s_mean} | {p(s['p_value'])} | {r_mean} | "
                     f"{p(r['p_value'])} |")  # fmt: skip
    lines += ["", "Against the strongest naive baseline (paired, same resamples):", ""]
    paired = info.get("paired", {})
    lines += [f"- {paired[k]['sentence']}" for k in keys if k in paired]
    if not paired:
        lines.append("- No baseline had a defined statistic to compare against.")
    return lines


def _generation_lines(g: dict[str, Any]) -> list[str]:
    if "max_new_tokens" not in g:
        return []
    if g.get("source") == "auto":
        how = (f"auto: max(ceil(p99 {g['completion_p99']:g} x (1 + {g['margin']:g})), "
               f"max {g['completion_max']:g}) = {g['wanted']} from `{g['report']}`")  # fmt: skip
        if g["wanted"] != g["max_new_tokens"]:
            how += f", capped so the longest prompt ({g['longest_prompt']} tokens) fits"
    else:
        how = "set in the eval config"
    context = g.get("context_length")
    return [
        f"Generation: greedy, at most **{g['max_new_tokens']}** new tokens per row ({how}), "
        f"stopped at {', '.join(f'`{t}`' for t in g.get('stop_tokens', []))}; context "
        f"{'unknown' if context is None else f'{context} tokens'}; "
        f"{g.get('prompts_trimmed', 0)} prompts trimmed to fit.",
        "",
    ]


def confusion_png(info: dict[str, Any], path: Path) -> None:
    """``confusion_matrix.png``: true against predicted action, the counts beside the matrix
    normalised by true label (each row sums to 1: the share of each label predicted as each
    action), with a colour bar; a Figure, not pyplot (no global state, a faster import)."""
    from matplotlib.figure import Figure

    cm = info["classification"]["confusion_matrix"]
    labels, matrix = cm["labels"], np.array(cm["matrix"], dtype=float)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    fig = Figure(figsize=(12, 5.2), dpi=110, layout="constrained")
    left, right = fig.subplots(1, 2)
    for ax, values, title, text in (
        (left, matrix, "counts", lambda v: f"{v:.0f}"),
        (right, shares, "share of each thesis label (rows sum to 1)", lambda v: f"{v:.0%}"),
    ):
        top = values.max() if values.size and values.max() > 0 else 1.0
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=top if values is matrix else 1.0)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("thesis label")
        ax.set_title(title)
        limit = top if values is matrix else 1.0
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, text(value), ha="center", va="center",
                    color="white" if value > limit / 2 else "black")  # fmt: skip
        fig.colorbar(image, ax=ax, shrink=0.85,
                     format=(lambda v, _: f"{v:.0%}") if values is shares else None)  # fmt: skip
    acc = info["classification"]["accuracy"]
    fig.suptitle(f"Confusion matrix, {info['split']} split (accuracy {acc:.3f})")
    fig.savefig(path, format="png")


def write_outputs(
    out: Path,
    frame: pd.DataFrame,
    texts: Sequence[str],
    info: dict[str, Any],
    forward_windows: Sequence[int],
    new_tokens: Sequence[int] | None = None,
) -> list[Path]:
    """Write every output beside ``out`` (the per-sample CSV), atomically and together.

    Args:
        out: The CSV's path; the generations, metrics, summary and plot go beside it.
        frame: The per-sample frame, forward returns included.
        texts: The generated text of each row, in the frame's order.
        info: The metrics (:func:`charlie.evaluation.core.compute_metrics`).
        forward_windows: The windows, in the summary's order.
        new_tokens: Tokens generated per row, recorded in the generations beside
            ``truncated`` (the frame's column).

    Returns:
        The paths written.
    """
    paths = [out, out.with_name("eval_generations.jsonl"), out.with_name("eval_metrics.json"),
             out.with_name("eval_summary.md"), out.with_name("confusion_matrix.png"),
             headline_path(out, "eval")]  # fmt: skip
    with atomic_outputs(*paths) as (csv, gen, met, md, png, hl):
        frame.to_csv(csv, index=False)
        gen.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n"
                               for line in _generation_records(frame, texts, new_tokens)),
                       encoding="utf-8")  # fmt: skip
        met.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        write_headline(hl, headlines.evaluate(info))
        md.write_text(summary_markdown(info, forward_windows), encoding="utf-8")
        confusion_png(info, png)
    return paths


def _generation_records(
    frame: pd.DataFrame, texts: Sequence[str], new_tokens: Sequence[int] | None
) -> list[dict[str, Any]]:
    """``eval_generations.jsonl``'s lines: uid, generated, and new_tokens and truncated when known."""
    records: list[dict[str, Any]] = [
        {"uid": u, "generated": t} for u, t in zip(frame["uid"], texts, strict=True)
    ]
    if new_tokens is not None:
        for record, n in zip(records, new_tokens, strict=True):
            record["new_tokens"] = int(n)
    if "truncated" in frame:
        for record, flag in zip(records, frame["truncated"], strict=True):
            record["truncated"] = bool(flag)
    return records
