"""Two models side by side on the same test rows: which one is better, and how sure that is.

Pure: each model's per-row evaluation frame (``eval_results.csv``) and its backtest (the daily
CSV and ``<stem>_metrics.json``) in, the comparison dict out; :func:`summary_markdown` and
:func:`comparison_png` render it. ``charlie compare`` (:mod:`charlie.stages.compare`) reads and
writes the files.

The classification and per-row trading statistics are compared with the evaluation's own
machinery (:func:`charlie.evaluation.uncertainty.assess`): one stationary block bootstrap over
dates resamples both models' rows together, so each interval of a difference is paired; the
accuracy difference adds McNemar's exact test on the rows where exactly one is right. The
portfolios are compared on their daily returns after costs: one stationary block bootstrap over
trading days resamples both return series together, giving paired intervals of the Sharpe
ratio's and the mean daily return's difference and a two-sided bootstrap p-value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from charlie.errors import CharlieError
from charlie.evaluation import metrics as m
from charlie.evaluation import uncertainty as u

PERIODS = 252  # trading days a year, as the backtest annualises
PORTFOLIO_KEYS = ("total_return", "sharpe", "max_drawdown", "turnover", "n_trades", "exposure")
"""The backtest's strategy figures shown side by side (its ``<stem>_metrics.json``)."""


def aligned_rows(
    frames: Mapping[str, pd.DataFrame], windows: Sequence[int]
) -> dict[str, pd.DataFrame]:
    """Each model's evaluation frame in one row order, after checking they hold the same rows.

    Args:
        frames: Model name -> its ``eval_results.csv`` (uid, ticker, as_of_date, true_action,
            pred_action, truncated, fwd_ret_<h>, exec_ret_<h>).
        windows: The forward windows whose return columns are compared.

    Raises:
        CharlieError: A frame lacks a column, a uid repeats, the models were evaluated on
            different rows, or on the same rows with different labels or returns (another
            split, dataset or price source): a comparison there would not be paired.
    """
    needed = ["uid", "ticker", "as_of_date", "true_action", "pred_action",
              *(f"{k}_{h}" for h in windows for k in ("fwd_ret", "exec_ret"))]  # fmt: skip
    out = {}
    for name, frame in frames.items():
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise CharlieError(
                f"{name}'s evaluation lacks the column(s) {', '.join(missing)}; compare reads "
                "eval_results.csv as `charlie evaluate` writes it (same forward_windows)."
            )
        if frame["uid"].duplicated().any():
            uid = frame.loc[frame["uid"].duplicated(), "uid"].iloc[0]
            raise CharlieError(f"{name}'s evaluation lists uid {uid} more than once.")
        out[name] = frame.sort_values("uid", kind="stable").reset_index(drop=True)
    (first, a), *rest = out.items()
    for name, b in rest:
        only_a, only_b = set(a["uid"]) - set(b["uid"]), set(b["uid"]) - set(a["uid"])
        if only_a or only_b:
            example = sorted(only_a or only_b)[0]
            raise CharlieError(
                f"{first} and {name} were evaluated on different rows ({len(only_a)} only in "
                f"{first}'s, {len(only_b)} only in {name}'s, e.g. {example}); evaluate both on "
                "the same split of the same dataset (and without --limit) to compare them."
            )
        for column in ("ticker", "as_of_date", "true_action"):
            if not (a[column].astype(str) == b[column].astype(str)).all():
                raise CharlieError(
                    f"{first} and {name} disagree on the {column} of the same uid: their "
                    "evaluations come from different datasets."
                )
        for column in needed[5:]:
            x, y = a[column].to_numpy(dtype="float64"), b[column].to_numpy(dtype="float64")
            if not np.allclose(x, y, rtol=1e-9, atol=1e-12, equal_nan=True):
                raise CharlieError(
                    f"{first} and {name} have different {column} on the same rows: they were "
                    "scored with different prices or price_basis; compare them on one."
                )
    return out


def compare_evaluations(
    frames: Mapping[str, pd.DataFrame],
    windows: Sequence[int],
    units: Mapping[str, float],
    *,
    block_length: int,
    samples: int,
    permutations: int,
    seed: int,
) -> dict[str, Any]:
    """Both models' classification and trading figures, and the candidate's paired edge.

    Args:
        frames: Exactly two models, the baseline first, then the candidate (the one asked
            about); their frames as :func:`aligned_rows` returns them.
        windows: The forward windows.
        units: The strategy's units per action (:func:`charlie.strategy.row_units`).
        block_length, samples, permutations, seed: The evaluation's bootstrap settings.

    Returns:
        ``rows``, ``agreement`` (share of rows with the same action), ``models`` (name ->
        ``classification``: accuracy with its interval, macro-F1, parse rate, unparseable,
        truncated; ``trading``: per window the hit rate and mean signed return of the sign
        view, trades and the mean executable return per trade and per row, with intervals),
        ``paired`` (per statistic: candidate minus baseline, its paired interval, McNemar's
        p for accuracy, whether it is distinguishable from zero, one sentence) and
        ``bootstrap`` (its settings).
    """
    if len(frames) != 2:
        raise CharlieError(f"compare takes two models, not {len(frames)}.")
    (base, b), (cand, c) = frames.items()
    truth = list(b["true_action"])
    fwd, exe, measures = m.window_returns(b, windows, units)
    preds = {name: [str(p) for p in f["pred_action"]] for name, f in frames.items()}
    cut = _truncated(c)
    # the candidate plays the evaluation's "model"; the baseline model is the only candidate
    edge = u.assess(truth, {"model": preds[cand], base: preds[base]}, measures,
                    list(b["as_of_date"].astype(str)), list(b["ticker"].astype(str)), cut,
                    candidates=[base], block_length=block_length, samples=samples,
                    permutations=permutations, seed=seed)  # fmt: skip
    models = {}
    for name, frame in frames.items():
        key = "model" if name == cand else name
        ci, point = edge["intervals"][key], edge["point"][key]
        cls = m.classification(truth, preds[name], _truncated(frame))
        fin = m.financial(preds[name], fwd, exe, units)
        trading = {}
        for h in windows:
            w = fin[f"{h}d"]
            row = {"hit_rate": w.get("hit_rate"), "trades": w.get("trades")}
            for stat in ("mean_signed_return", "mean_trade_return", "mean_row_return"):
                value = point[f"{stat}_{h}d"]
                row[stat] = float(value) if np.isfinite(value) else None
                row[f"{stat}_ci95"] = ci[f"{stat}_{h}d"]
            trading[f"{h}d"] = row
        models[name] = {
            "classification": {
                "accuracy": cls["accuracy"],
                "accuracy_ci95": ci["accuracy"],
                "macro_f1": cls["macro_f1"],
                "parse_rate": cls["parse_rate"],
                "unparseable": cls["unparseable"],
                "truncated": cls["truncated"],
            },
            "trading": trading,
        }
    paired = {}
    for key, test in edge["paired"].items():
        entry = {k: v for k, v in test.items() if k not in ("model", "baseline_value")}
        entry.update(candidate=test["model"], baseline=base, baseline_value=test["baseline_value"])
        entry["sentence"] = test["sentence"].replace("The model's edge", f"{cand}'s edge")
        entry["sentence"] = entry["sentence"].replace("the model is", f"{cand} is")
        paired[key] = entry
    same = np.asarray(preds[base]) == np.asarray(preds[cand])
    return {
        "baseline": base,
        "candidate": cand,
        "rows": len(truth),
        "agreement": float(same.mean()) if len(same) else None,
        "models": models,
        "paired": paired,
        "bootstrap": edge["bootstrap"],
    }


def _truncated(frame: pd.DataFrame) -> list[bool]:
    if "truncated" not in frame:
        return [False] * len(frame)
    return [str(v).strip().lower() in ("true", "1") for v in frame["truncated"]]


def sharpe_samples(counts: np.ndarray, returns: np.ndarray) -> np.ndarray:
    """Per resample (a row of date counts), the annualised Sharpe ratio of the daily returns
    (mean / std with ddof=1 x sqrt(252); NaN where the std is 0)."""
    n = counts.sum(axis=1)
    mean = counts @ returns / n
    var = (counts @ (returns**2) / n - mean**2) * n / np.maximum(n - 1, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 1e-30, mean / np.sqrt(np.maximum(var, 0)), np.nan) * np.sqrt(PERIODS)


def bootstrap_p(differences: np.ndarray) -> float | None:
    """Two-sided bootstrap p-value that a difference is zero: twice the smaller share of the
    finite resampled differences on either side of 0 (at most 1)."""
    d = differences[np.isfinite(differences)]
    if not d.size:
        return None
    return float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))


def compare_portfolios(
    daily: Mapping[str, pd.DataFrame],
    metrics: Mapping[str, Mapping[str, Any]],
    *,
    block_length: int,
    samples: int,
    seed: int,
) -> dict[str, Any]:
    """Both backtests side by side, and the candidate's paired edge in Sharpe and daily return.

    Args:
        daily: Model name (baseline first) -> its backtest's daily CSV (date, returns, ...).
        metrics: Model name -> its ``<stem>_metrics.json`` (strategy, costs, benchmark).
        block_length, samples, seed: The stationary bootstrap over trading days.

    Returns:
        ``models`` (name -> the strategy's total return, Sharpe, max drawdown, turnover, trades,
        exposure, costs paid, with the Sharpe's bootstrap interval), ``benchmark`` (the
        equal-weight buy-and-hold, from the baseline's metrics), ``days`` compared, ``paired``
        (``sharpe`` and ``mean_daily_return``: candidate minus baseline, its interval,
        bootstrap p, distinguishable, sentence), ``bootstrap`` (its settings).

    Raises:
        CharlieError: The two backtests share no trading day.
    """
    (base, b), (cand, c) = daily.items()
    joined = pd.merge(b[["date", "returns"]], c[["date", "returns"]], on="date", how="inner",
                      suffixes=("_base", "_cand"))  # fmt: skip
    if joined.empty:
        raise CharlieError(
            f"the {base} and {cand} backtests share no trading day: backtest both models' "
            "predictions on the same test split."
        )
    r = {
        base: joined["returns_base"].to_numpy(dtype="float64"),
        cand: joined["returns_cand"].to_numpy(dtype="float64"),
    }
    counts = u.stationary_counts(len(joined), block_length, samples, seed)
    sharpe = {name: sharpe_samples(counts, x) for name, x in r.items()}
    means = {name: counts @ x / counts.sum(axis=1) for name, x in r.items()}
    models = {}
    for name, info in metrics.items():
        s = info["strategy"]
        models[name] = {k: s.get(k) for k in PORTFOLIO_KEYS}
        models[name]["costs_paid"] = info.get("costs", {}).get("strategy", {}).get("total")
        models[name]["sharpe_ci95"] = u.interval(sharpe[name])
    paired = {}
    point_sharpe = {n: float(sharpe_samples(np.ones((1, len(x))), x)[0]) for n, x in r.items()}
    for key, samples_by, point in (
        ("sharpe", sharpe, point_sharpe),
        ("mean_daily_return", means, {n: float(x.mean()) for n, x in r.items()}),
    ):
        diffs = samples_by[cand] - samples_by[base]
        diff, ci, p = point[cand] - point[base], u.interval(diffs), bootstrap_p(diffs)
        what = "annualised Sharpe" if key == "sharpe" else "mean daily return after costs"
        real = len(ci) == 2 and not ci[0] <= 0 <= ci[1] and (p is None or p < u.Z)
        span = f"95% interval {ci[0]:+.4g} .. {ci[1]:+.4g}" if ci else "no interval"
        test = f"; bootstrap p = {p:.3g}" if p is not None else ""
        head = f"{cand}'s edge in {what} over {base} ({diff:+.4g}; {span}{test})"
        side = "ahead of" if diff > 0 else "behind"
        sentence = (f"{head} is distinguishable from zero: {cand} is {side} it." if real
                    else f"{head} is not distinguishable from zero.")  # fmt: skip
        paired[key] = {"candidate": point[cand], "baseline": base, "baseline_value": point[base],
                       "difference": diff, "difference_ci95": ci, "bootstrap_p": p,
                       "distinguishable": real, "sentence": sentence}  # fmt: skip
    bench = metrics[base].get("benchmark", {})
    return {
        "days": len(joined),
        "models": models,
        "benchmark": {k: bench.get(k) for k in ("total_return", "sharpe", "max_drawdown")},
        "paired": paired,
        "bootstrap": {
            "method": "stationary block bootstrap over trading days (both series together)",
            "block_length": block_length,
            "samples": samples,
            "seed": seed,
        },
    }


def verdict(evaluation: Mapping[str, Any], portfolio: Mapping[str, Any] | None) -> str:
    """One sentence: whether the candidate is ahead of, behind or not distinguishable from the
    baseline after costs (the portfolio's Sharpe; the evaluation's accuracy without one)."""
    base, cand = evaluation["baseline"], evaluation["candidate"]
    test = (portfolio or {}).get("paired", {}).get("sharpe") or evaluation["paired"].get("accuracy")
    if test is None:
        return f"{cand} and {base} cannot be compared: no statistic is defined on these rows."
    what = "Sharpe after costs" if portfolio else "accuracy"
    diff = format(test["difference"], "+.2f" if portfolio else "+.3f")
    if not test["distinguishable"]:
        return (
            f"On these rows {cand} is not distinguishable from {base} in {what} (difference "
            f"{diff}): the difference is within what resampling the same dates produces."
        )
    side = "ahead of" if test["difference"] > 0 else "behind"
    return f"{cand} is {side} {base} in {what} (difference {diff}), beyond resampling noise."


def _difference(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


# ------------------------------------------------------------------- rendering


def _pct(value: Any, digits: int = 2, sign: str = "") -> str:
    """A share as a percentage; ``sign="+"`` for a difference (``+0.1%``, ``-0.1%``)."""
    return "n/a" if value is None or not np.isfinite(value) else f"{value:{sign}.{digits}%}"


def _num(value: Any, fmt: str = ".3f") -> str:
    return "n/a" if value is None or not np.isfinite(value) else format(value, fmt)


def _ci(ci: Sequence[float], pct: bool = False) -> str:
    if len(ci) != 2:
        return ""
    f = (lambda v: f"{v:.3%}") if pct else (lambda v: f"{v:.3f}")
    return f" [{f(ci[0])}, {f(ci[1])}]"


def summary_markdown(info: Mapping[str, Any]) -> str:
    """The comparison for people: the verdict, then the tables, then how it was computed."""
    ev, pf = info["evaluation"], info.get("portfolio")
    base, cand = ev["baseline"], ev["candidate"]
    names = (base, cand)
    lines = [f"# {cand} against {base}, on the same {ev['rows']} {info.get('split', 'test')} rows",
             "", f"**{info['verdict']}**", "",
             f"The two models choose the same action on {_pct(ev['agreement'], 1)} of the rows. "
             "Brackets are 95% intervals; differences are candidate minus baseline, their "
             "intervals paired (both models resampled on the same dates).", "",
             "## As a classifier", "", f"| | {base} | {cand} | difference |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    acc = ev["paired"].get("accuracy", {})
    cls = {n: ev["models"][n]["classification"] for n in names}
    test = f"{_num(acc.get('difference'), '+.3f')}{_ci(acc.get('difference_ci95', []))}"
    if acc.get("mcnemar_p") is not None:
        test += f", McNemar p = {acc['mcnemar_p']:.3g}"
    lines.append(f"| accuracy | {_num(cls[base]['accuracy'])}{_ci(cls[base]['accuracy_ci95'])} "
                 f"| {_num(cls[cand]['accuracy'])}{_ci(cls[cand]['accuracy_ci95'])} | {test} |")  # fmt: skip
    for key in ("macro_f1", "parse_rate"):
        diff = cls[cand][key] - cls[base][key]
        lines.append(f"| {key.replace('_', '-' if key == 'macro_f1' else ' ')} | "
                     f"{_num(cls[base][key])} | {_num(cls[cand][key])} | {diff:+.3f} |")  # fmt: skip
    lines += ["", "## As trades (per row of the evaluation, before costs)", "",
              "Executable returns: decided at the close of t, filled at the next open; per row "
              "a flat row counts 0. The sign view's mean signed return is close to close.", "",
              f"| window | statistic | {base} | {cand} | difference |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for window in ev["models"][base]["trading"]:
        for stat, label in (("hit_rate", "hit rate (sign view)"),
                            ("mean_signed_return", "mean signed return"),
                            ("mean_trade_return", "mean return per trade"),
                            ("mean_row_return", "mean return per row")):  # fmt: skip
            t = {n: ev["models"][n]["trading"][window] for n in names}
            if stat == "hit_rate":
                a, c = t[base][stat], t[cand][stat]
                lines.append(f"| {window} | {label} | {_pct(a, 1)} | {_pct(c, 1)} | "
                             f"{_pct(_difference(c, a), 1, '+')} |")  # fmt: skip
                continue
            p = ev["paired"].get(f"{stat}_{window}", {})
            cells = [f"{_pct(t[n][stat], 3)}{_ci(t[n][f'{stat}_ci95'], True)}" for n in names]
            diff = f"{_pct(p.get('difference'), 3, '+')}{_ci(p.get('difference_ci95', []), True)}"
            lines.append(f"| {window} | {label} | {cells[0]} | {cells[1]} | {diff} |")
        trades = [ev["models"][n]["trading"][window]["trades"] for n in names]
        lines.append(f"| {window} | trades | {trades[0]} | {trades[1]} | |")
    if pf:
        lines += ["", f"## As a portfolio (the backtest, after costs, {pf['days']} trading days)",
                  "", f"| | {base} | {cand} | equal-weight buy and hold |",
                  "| --- | --- | --- | --- |"]  # fmt: skip
        mm, bench = pf["models"], pf["benchmark"]
        lines.append(f"| total return | {_pct(mm[base]['total_return'])} | "
                     f"{_pct(mm[cand]['total_return'])} | {_pct(bench.get('total_return'))} |")  # fmt: skip
        lines.append(f"| Sharpe (annualised) | {_num(mm[base]['sharpe'], '.2f')}"
                     f"{_ci(mm[base]['sharpe_ci95'])} | {_num(mm[cand]['sharpe'], '.2f')}"
                     f"{_ci(mm[cand]['sharpe_ci95'])} | {_num(bench.get('sharpe'), '.2f')} |")  # fmt: skip
        lines.append(f"| max drawdown | {_pct(mm[base]['max_drawdown'])} | "
                     f"{_pct(mm[cand]['max_drawdown'])} | {_pct(bench.get('max_drawdown'))} |")  # fmt: skip
        for key, label, fmt in (("turnover", "turnover (annualised)", ".2f"),
                                ("n_trades", "trades", "d"), ("costs_paid", "costs paid", ",.0f"),
                                ("exposure", "mean gross exposure", ".1%")):  # fmt: skip
            cells = [_num(mm[n][key], fmt) if mm[n][key] is not None else "n/a" for n in names]
            lines.append(f"| {label} | {cells[0]} | {cells[1]} | |")
        lines += [""] + [f"- {t['sentence']}" for t in pf["paired"].values()]
    lines += ["", "## Paired tests of the evaluation", ""]
    lines += [f"- {t['sentence']}" for t in ev["paired"].values()]
    b = ev["bootstrap"]
    lines += ["", "## How this was computed", "",
              f"- Rows: the same {ev['rows']} rows (matched by uid; tickers, dates, labels and "
              "forward returns checked equal).",
              f"- Evaluation intervals: {b['method']}, mean block {b['block_length']} dates, "
              f"{b['samples']} resamples, seed {b['seed']}; truncated generations of "
              f"{cand} hold no position and count as wrong.",
              "- Macro-F1 and the hit rate have no interval here (not ratio statistics of rows)."]  # fmt: skip
    if pf:
        pb = pf["bootstrap"]
        lines.append(f"- Portfolio: {pb['method']}, mean block {pb['block_length']} days, "
                     f"{pb['samples']} resamples; the p-value is two-sided (twice the smaller "
                     "share of resampled differences on either side of 0).")  # fmt: skip
    return "\n".join(lines) + "\n"


def comparison_png(
    info: Mapping[str, Any], daily: Mapping[str, pd.DataFrame] | None, path: Any
) -> None:
    """Left: each model's mean executable return per row by forward window, with its 95%
    interval; right (with backtests): each portfolio's growth of 1 after costs."""
    from matplotlib.figure import Figure

    ev = info["evaluation"]
    names = (ev["baseline"], ev["candidate"])
    fig = Figure(figsize=(11 if daily else 6, 4.2), dpi=110)
    ax = fig.add_subplot(1, 2 if daily else 1, 1)
    windows = list(ev["models"][names[0]]["trading"])
    for k, name in enumerate(names):
        rows = [ev["models"][name]["trading"][w] for w in windows]
        x = np.arange(len(windows)) + (k - 0.5) * 0.3
        y = np.array([np.nan if r["mean_row_return"] is None else r["mean_row_return"]
                      for r in rows])  # fmt: skip
        ci = [r["mean_row_return_ci95"] or [np.nan, np.nan] for r in rows]
        err = np.abs(np.array([[lo for lo, _ in ci], [hi for _, hi in ci]]) - y)
        ax.bar(x, y, width=0.3, label=name, yerr=np.nan_to_num(err), capsize=3)
    ax.axhline(0, color="0.4", linewidth=0.8)
    ax.set_xticks(np.arange(len(windows)), windows)
    ax.set_xlabel("forward window (trading days)")
    ax.set_ylabel("mean return per row (flat 0), 95% interval")
    ax.set_title("Evaluation: executable return before costs")
    ax.legend(loc="best")
    if daily:
        ax2 = fig.add_subplot(1, 2, 2)
        for name, frame in daily.items():
            growth = (1 + frame["returns"].astype("float64")).cumprod()
            ax2.plot(pd.to_datetime(frame["date"]), growth, label=name, linewidth=1.6)
        ax2.axhline(1.0, color="0.6", linewidth=0.8)
        ax2.set_ylabel("growth of 1 (after costs)")
        ax2.set_title("Backtest: portfolio after costs")
        ax2.legend(loc="best")
        ax2.grid(alpha=0.3)
        for label in ax2.get_xticklabels():
            label.set_rotation(30)
            label.set_horizontalalignment("right")
    fig.suptitle(f"{names[1]} against {names[0]} on the same {ev['rows']} rows")
    fig.tight_layout()
    fig.savefig(path, format="png")
