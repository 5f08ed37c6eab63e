"""Whether the edge is real: intervals, nulls and paired tests that respect dependence.

Forward windows overlap (a 5-day return on consecutive days shares 4 days) and same-day
returns across tickers correlate, so rows are not independent. Every interval here is a
stationary block bootstrap over dates: whole dates (all tickers of a date together) are
resampled in runs of consecutive dates whose length is geometric with mean ``block_length``.
The null of "random actions at the model's own frequencies" is a permutation distribution of
the model's predictions within each ticker (shuffled across dates, or rotated in time). Rows
whose generation was truncated by the budget hold no position and stay in place, flat, in
every resample and permutation.

Everything is vectorised: a statistic is a ratio of per-row sums, so a resample is a vector
of per-date counts and a batch of resamples one matrix product.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from charlie import UNPARSEABLE

Z = 0.05  # two-sided level of every interval and test


def date_codes(dates: Sequence[str]) -> tuple[np.ndarray, int]:
    """Each row's date as an index into the sorted distinct dates, and how many there are."""
    distinct, codes = np.unique(np.asarray(dates, dtype=str), return_inverse=True)
    return codes.astype(np.int64), len(distinct)


def stationary_counts(n_dates: int, block_length: int, samples: int, seed: int) -> np.ndarray:
    """(samples, n_dates): how often each date is drawn in each stationary block resample.

    Politis and Romano's stationary bootstrap over the sorted dates, circular: each position
    starts a new block (at a uniformly drawn date) with probability 1 / ``block_length``, else
    takes the date after the previous one; ``block_length`` 1 resamples dates independently.
    """
    rng = np.random.default_rng([seed, 1])
    if n_dates == 0:
        return np.zeros((samples, 0), dtype=np.int64)
    j = np.arange(n_dates)
    new = rng.random((samples, n_dates)) < 1.0 / block_length
    new[:, 0] = True
    starts = rng.integers(0, n_dates, size=(samples, n_dates))
    begun = np.maximum.accumulate(np.where(new, j, 0), axis=1)  # where the current block began
    idx = (np.take_along_axis(starts, begun, axis=1) + j - begun) % n_dates
    flat = (np.arange(samples)[:, None] * n_dates + idx).ravel()
    return np.bincount(flat, minlength=samples * n_dates).reshape(samples, n_dates)


def per_date(codes: np.ndarray, n_dates: int, values: np.ndarray) -> np.ndarray:
    """Sums of ``values`` (rows, or (k, rows)) over each date: shape (n_dates,) or (k, n_dates)."""
    values = np.atleast_2d(np.asarray(values, dtype="float64"))
    out = np.zeros((values.shape[0], n_dates))
    np.add.at(out, (slice(None), codes), values)
    return out if out.shape[0] > 1 else out[0]


def ratio_samples(counts: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Per resample, sum(num) / sum(den) weighted by the date counts (NaN where den sums to 0)."""
    top, bottom = counts @ num, counts @ den
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)


def interval(samples: np.ndarray) -> list[float]:
    """The central 95% of the finite samples ([] when none is finite)."""
    x = samples[np.isfinite(samples)]
    if not x.size:
        return []
    return [float(np.percentile(x, 100 * Z / 2)), float(np.percentile(x, 100 * (1 - Z / 2)))]


Measure = tuple[Mapping[str, float], np.ndarray, bool]
"""A return statistic: (units per action, the return per row, per trade?). Per trade, the
mean of units x return is over the rows with a nonzero position; otherwise over every row,
a flat one counting 0. Rows whose return is unknown (NaN) are left out of either."""


def positions(actions: np.ndarray, units: Mapping[str, float]) -> np.ndarray:
    """The units each action (an array of any shape) holds."""
    keys = np.array(list(units), dtype=str)
    values = np.array([units[k] for k in keys], dtype="float64")
    order = np.argsort(keys)
    idx = np.searchsorted(keys[order], actions)
    return values[order][np.clip(idx, 0, len(keys) - 1)]


def row_stats(
    correct: np.ndarray, legs: Mapping[str, tuple[np.ndarray, np.ndarray, bool]]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(numerator, denominator) per row of accuracy and of each return statistic.

    ``legs`` maps a statistic to (position per row, return per row, per trade?) (position 0:
    flat, truncated rows included); see :data:`Measure`.
    """
    out = {"accuracy": (correct.astype("float64"), np.ones(correct.shape))}
    for key, (pos, ret, per_trade) in legs.items():
        known = ~np.isnan(ret)
        active = known & (pos != 0) if per_trade else known & np.ones(pos.shape, dtype=bool)
        out[key] = (np.where(active, pos * np.nan_to_num(ret), 0.0), active.astype("float64"))
    return out


# ------------------------------------------------------------------- the permutation nulls


def shuffle_sources(groups: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, rows): per permutation, the row each row takes its prediction from, shuffled within
    its group (a group of one stays put)."""
    rng = np.random.default_rng([seed, 2])
    rows = len(groups)
    order = np.argsort(groups, kind="stable")
    keyed = np.argsort(groups[None, :] + rng.random((n, rows)), axis=1)  # groups are integers
    src = np.empty((n, rows), dtype=np.int64)
    src[:, order] = keyed
    return src


def rotate_sources(groups: np.ndarray, dates: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, rows): per permutation, each group's sequence (in date order) rotated in time by a
    random offset, so each group keeps its pattern of actions (a group of one stays put)."""
    rng = np.random.default_rng([seed, 3])
    rows = len(groups)
    order = np.lexsort((dates, groups))  # by group, then date
    g = groups[order]
    first = np.r_[True, g[1:] != g[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(rows), 0))
    size = np.bincount(np.cumsum(first) - 1)[np.cumsum(first) - 1]
    offset = rng.integers(0, np.iinfo(np.int64).max, size=(n, int(first.sum())))
    shift = offset[:, np.cumsum(first) - 1] % size  # one offset per group
    pos = start + (np.arange(rows) - start + shift) % size
    src = np.empty((n, rows), dtype=np.int64)
    src[:, order] = order[pos]
    return src


def permutation_null(
    truth: np.ndarray,
    pred: np.ndarray,
    measures: Mapping[str, Measure],
    sources: np.ndarray,
) -> dict[str, dict[str, Any]]:
    """Per statistic: the observed value, the null's mean and central 95%, and the p-value.

    Args:
        truth, pred: Actions per row.
        measures: The return statistics (:data:`Measure`) by name.
        sources: (n, rows) from :func:`shuffle_sources` or :func:`rotate_sources`.

    The p-value is (1 + #{null >= observed}) / (1 + n), n counting the permutations where the
    statistic is defined: the probability that the model's own actions, placed at random, do as
    well; None when the observed value (or every permuted one) is undefined.
    """
    pos = {k: positions(pred, units) for k, (units, _, _) in measures.items()}
    observed = row_stats(
        truth == pred, {k: (pos[k], ret, trade) for k, (_, ret, trade) in measures.items()}
    )
    shuffled = row_stats(
        truth[None, :] == pred[sources],
        {k: (pos[k][sources], ret[None, :], trade) for k, (_, ret, trade) in measures.items()},
    )
    out = {}
    for key, (num, den) in shuffled.items():
        o_num, o_den = observed[key]
        value = float(o_num.sum() / o_den.sum()) if o_den.sum() > 0 else None
        den_b = den.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            null = np.where(den_b > 0, num.sum(axis=1) / np.where(den_b > 0, den_b, 1), np.nan)
        finite = null[np.isfinite(null)]
        p = None
        if value is not None and finite.size:
            p = float((1 + (finite >= value - 1e-12).sum()) / (1 + finite.size))
        out[key] = {
            "observed": value,
            "null_mean": float(finite.mean()) if finite.size else None,
            "null_ci95": interval(null),
            "p_value": p,
        }
    return out


# ------------------------------------------------------------------- the paired tests


def mcnemar_exact(model_only: int, baseline_only: int) -> float:
    """Two-sided exact McNemar p-value: a binomial(b + c, 1/2) test on the discordant pairs."""
    n = model_only + baseline_only
    if n == 0:
        return 1.0
    k = min(model_only, baseline_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return float(min(1.0, 2 * tail))


def edge_sentence(
    what: str, baseline: str, diff: float, ci: list[float], p: float | None = None
) -> tuple[str, bool]:
    """One sentence on the model's edge over ``baseline``, and whether it is distinguishable
    from zero: the interval excludes 0 and, when a test's ``p`` is given, p < 0.05."""
    span = f"95% block-bootstrap interval {ci[0]:+.4g} .. {ci[1]:+.4g}" if ci else "no interval"
    test = f"; McNemar exact p = {p:.3g}" if p is not None else ""
    head = f"The model's edge in {what} over {baseline} ({diff:+.4g}; {span}{test})"
    real = bool(ci) and not ci[0] <= 0 <= ci[1] and (p is None or p < Z)
    if not real:
        return f"{head} is not distinguishable from zero.", False
    side = "ahead of" if diff > 0 else "behind"
    return f"{head} is distinguishable from zero: the model is {side} it.", True


def effective_block_length(setting: int | str, windows: Sequence[int]) -> int:
    """The mean block length in dates: the setting, or for ``auto`` the longest window."""
    return max(windows) if setting == "auto" else int(setting)


def assess(
    truth: Sequence[str],
    strategies: Mapping[str, Sequence[str]],
    measures: Mapping[str, Measure],
    dates: Sequence[str],
    tickers: Sequence[str],
    truncated: Sequence[bool],
    *,
    candidates: Sequence[str],
    block_length: int,
    samples: int,
    permutations: int,
    seed: int,
) -> dict[str, Any]:
    """Block-bootstrap intervals for every strategy, the model's permutation nulls, and the
    paired tests of the model against the strongest of ``candidates``.

    Args:
        truth: The thesis labels per row.
        strategies: Actions per row per strategy, ``model`` among them.
        measures: The return statistics (:data:`Measure`) by name, each strategy's actions
            scored with the same units (NaN returns: unknown).
        dates, tickers: Each row's date (ISO) and ticker.
        truncated: Per row, whether the budget cut the generation: the model holds no position
            there (and is wrong) in every resample, and those rows stay put in the nulls.
        candidates: The baselines the paired tests may pick (the best per statistic).
        block_length: Mean block length of the stationary bootstrap, in distinct dates.
        samples: Bootstrap resamples.
        permutations: Permutations per null.
        seed: Seeds the resamples and the permutations.

    Returns:
        ``intervals`` (strategy -> statistic -> [lo, hi]), ``point`` (strategy -> statistic
        -> value on the rows, NaN where undefined), ``bootstrap`` and ``null`` (their
        settings and, for the null, per scheme and statistic the observed value, null mean and
        central 95%, p-value), ``paired`` (per statistic: the baseline, the difference, its
        interval, McNemar's exact p for accuracy, distinguishable, sentence).
    """
    t = np.asarray(truth, dtype=str)
    cut = np.asarray(truncated, dtype=bool)
    codes, n_dates = date_codes(dates)
    counts = stationary_counts(n_dates, block_length, samples, seed)
    stats: dict[str, dict[str, np.ndarray]] = {}
    point: dict[str, dict[str, float]] = {}
    for name, actions in strategies.items():
        a = np.asarray(actions, dtype=str)
        correct = t == a
        legs = {}
        for key, (units, ret, trade) in measures.items():
            pos = positions(a, units)
            if name == "model":
                pos[cut] = 0.0
            legs[key] = (pos, ret, trade)
        if name == "model":
            correct = correct & ~cut
        rows = row_stats(correct, legs)
        stats[name] = {
            k: ratio_samples(counts, per_date(codes, n_dates, num), per_date(codes, n_dates, den))
            for k, (num, den) in rows.items()
        }
        point[name] = {
            k: float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")
            for k, (num, den) in rows.items()
        }
    intervals = {name: {k: interval(v) for k, v in s.items()} for name, s in stats.items()}

    # the nulls: the model's non-truncated predictions move within their ticker
    _, ticker_ids = np.unique(np.asarray(tickers, dtype=str), return_inverse=True)
    groups = np.where(cut, ticker_ids.max(initial=0) + 1 + np.arange(len(cut)), ticker_ids)
    model = np.asarray(strategies["model"], dtype=str)
    flat = np.where(cut, UNPARSEABLE, model)
    null = {
        "permutations": permutations,
        "truncated_rows_kept_flat": int(cut.sum()),
        "shuffle_within_ticker": permutation_null(
            t, flat, measures, shuffle_sources(groups, permutations, seed)
        ),
        "rotate_within_ticker": permutation_null(
            t, flat, measures, rotate_sources(groups, codes, permutations, seed)
        ),
    }

    # the paired tests against the strongest baseline
    paired: dict[str, Any] = {}
    for key in stats["model"]:
        scored = [(point[c][key], c) for c in candidates if np.isfinite(point[c][key])]
        if not scored or not np.isfinite(point["model"][key]):
            continue
        _, best = max(scored)
        diff = point["model"][key] - point[best][key]
        ci = interval(stats["model"][key] - stats[best][key])
        entry: dict[str, Any] = {
            "baseline": best,
            "model": point["model"][key],
            "baseline_value": point[best][key],
            "difference": diff,
            "difference_ci95": ci,
        }
        p = None
        if key == "accuracy":
            model_right = (t == model) & ~cut
            base_right = t == np.asarray(strategies[best], dtype=str)
            b, c = int((model_right & ~base_right).sum()), int((~model_right & base_right).sum())
            p = mcnemar_exact(b, c)
            entry.update(model_only_correct=b, baseline_only_correct=c, mcnemar_p=p)
        entry["sentence"], entry["distinguishable"] = edge_sentence(
            _describe(key), best, diff, ci, p
        )
        paired[key] = entry
    return {
        "bootstrap": {
            "method": "stationary block bootstrap over dates (whole dates resampled)",
            "block_length": block_length,
            "dates": n_dates,
            "samples": samples,
            "seed": seed,
            "truncated_rows_flat": int(cut.sum()),
        },
        "intervals": intervals,
        "point": point,
        "null": null,
        "paired": paired,
    }


DESCRIBE = {
    "mean_trade_return": "mean executable return per trade",
    "mean_row_return": "mean executable return per row (flat rows 0)",
    "mean_signed_return": "mean close-to-close signed return (sign view)",
}


def _describe(key: str) -> str:
    """``mean_trade_return_5d`` -> ``mean executable return per trade over 5 trading days``."""
    if key == "accuracy":
        return key
    stem, window = key.rsplit("_", 1)
    days = int(window[:-1])
    what = DESCRIBE.get(stem, stem.replace("_", " "))
    return f"{what} over {days} trading day{'s' if days != 1 else ''}"
