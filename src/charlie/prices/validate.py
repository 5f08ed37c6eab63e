"""Price bars are data, and data gets validated: every frame a provider returns goes through here.

``clean_bars`` drops the rows no prompt may quote and counts them by reason; what remains is
finite, positive, consistent and one row per date. A ticker left with no usable row is not
served (the next provider is tried; with none left, the stage fails naming it).

Reasons, in the order they are checked (a row is counted under the first that applies):

* ``bad_date``: the date does not parse (or lies outside the years 1678 to 2261, which
  ``datetime64[ns]`` cannot hold).
* ``missing_close``: no close (empty).
* ``not_numeric``: a price or the volume is text that is not a number.
* ``missing_value``: open, high, low or volume is empty.
* ``not_finite``: a price or the volume is infinite.
* ``non_positive_price``: a price (open, high, low, close, adjusted close) is zero or less.
* ``implausible_volume``: the volume is negative or above ``MAX_VOLUME`` shares.
* ``inconsistent_range``: high below max(open, close) or low above min(open, close), beyond
  ``RANGE_TOLERANCE`` (providers round prices).
* ``conflicting_duplicate``: two or more rows of one date that disagree (all are dropped;
  identical repeats collapse into one row and are counted as ``duplicate_date``).

An empty adjusted close (absent, NaN or blank) is the close: no adjustment is known.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import numpy as np
import pandas as pd

PRICES = ("open", "high", "low", "close", "adj_close")
MAX_VOLUME = 1e13  # shares a day: a thousand times the busiest stock's record
RANGE_TOLERANCE = 1e-3  # relative: prices rounded to the cent on a $10 stock
MAX_DROPPED_SHARE = 0.5  # more than this share of a ticker's rows dropped: the data is unusable
REASONS = ("bad_date", "missing_close", "not_numeric", "missing_value", "not_finite",
           "non_positive_price", "implausible_volume", "inconsistent_range",
           "conflicting_duplicate", "duplicate_date")  # fmt: skip
# Built once: a new column Index per frame costs as much as all the checks.
_VALUES = pd.Index([*PRICES, "volume"])
_FIRST_DAY, _LAST_DAY = np.datetime64("1678-01-01"), np.datetime64("2261-12-31")  # in ns range


def clean_bars(
    raw: pd.DataFrame, start: dt.date | None = None, end: dt.date | None = None
) -> tuple[pd.DataFrame, Counter[str]]:
    """``raw`` without the rows that fail a check, as float64 with naive normalised dates,
    sorted; and the drops by reason.

    ``raw`` has a ``date`` column and the price columns, any dtypes; where ``adj_close`` is
    absent or empty the close stands in (no adjustment known). Rows dated outside ``[start,
    end]`` are left out first and not counted: they were not asked for.

    The checks run on numpy arrays, one pass each over a ticker's rows: done with a pandas
    operation per check, validating a file cost twenty times reading it.
    """
    dates = calendar_days(raw["date"])
    inside = np.ones(len(dates), dtype=bool)
    if start is not None:
        inside &= np.isnat(dates) | (dates >= np.datetime64(start))
    if end is not None:
        inside &= np.isnat(dates) | (dates <= np.datetime64(end))
    empty_of, value_of = {}, {}
    for column in ("open", "high", "low", "close", "volume"):
        empty_of[column], value_of[column] = _numbers(raw[column])
    empty_of["adj_close"], value_of["adj_close"] = empty_of["close"], value_of["close"]
    if "adj_close" in raw:
        given = raw["adj_close"]
        absent = given.isna().to_numpy(dtype=bool)
        if not _numeric(given):
            absent = absent | _blank(given)
        adj_empty, adj_values = _numbers(given)
        empty_of["adj_close"] = np.where(absent, empty_of["close"], adj_empty)
        value_of["adj_close"] = np.where(absent, value_of["close"], adj_values)
    dates = dates[inside]
    columns = (*PRICES, "volume")
    empty = np.column_stack([empty_of[c][inside] for c in columns])
    matrix = np.column_stack([value_of[c][inside] for c in columns])

    reason = np.zeros(len(dates), dtype=np.int8)  # 0: kept; else 1 + its index in REASONS

    def mark(mask: np.ndarray, name: str) -> None:
        reason[(reason == 0) & mask] = REASONS.index(name) + 1

    o, h, lo, c, _, v = matrix.T
    with np.errstate(invalid="ignore"):
        mark(np.isnat(dates), "bad_date")
        mark(empty[:, columns.index("close")], "missing_close")
        mark((~empty & np.isnan(matrix)).any(axis=1), "not_numeric")
        mark(np.isnan(np.column_stack([o, h, lo, v])).any(axis=1), "missing_value")
        mark(np.isinf(matrix).any(axis=1), "not_finite")
        mark((matrix[:, : len(PRICES)] <= 0).any(axis=1), "non_positive_price")
        mark((v < 0) | (v > MAX_VOLUME), "implausible_volume")
        top, bottom = np.fmax(o, c), np.fmin(o, c)
        mark((h < top * (1 - RANGE_TOLERANCE)) | (lo > bottom * (1 + RANGE_TOLERANCE)),
             "inconsistent_range")  # fmt: skip
    bad = reason[reason > 0]
    codes, first = np.unique(bad, return_index=True)
    counts = np.bincount(bad)
    # by first occurrence, as counting row by row would: describe() breaks ties in this order
    dropped = Counter({REASONS[code - 1]: int(counts[code]) for code in codes[np.argsort(first)]})

    kept = reason == 0
    order = np.argsort(dates[kept], kind="stable")
    days = dates[kept][order]
    frame = pd.DataFrame(matrix[kept][order], columns=_VALUES)
    frame.insert(0, "date", days)
    if (days[1:] == days[:-1]).any():  # rare: several rows for one date
        repeats = frame.duplicated(keep="first")
        dropped["duplicate_date"] += int(repeats.sum())
        frame = frame.loc[~repeats]
        conflicts = frame.duplicated("date", keep=False)
        dropped["conflicting_duplicate"] += int(conflicts.sum())
        frame = frame.loc[~conflicts].reset_index(drop=True)
    return frame, Counter({k: v for k, v in dropped.items() if v})


def _numeric(given: pd.Series) -> bool:
    """Whether a column holds numbers already (numpy floats or integers): nothing to parse."""
    return isinstance(given.dtype, np.dtype) and given.dtype.kind in "fiu"


def _blank(given: pd.Series) -> np.ndarray:
    """Where a column's value is a blank string."""
    return given.astype(str).str.strip().eq("").to_numpy(dtype=bool)


def _numbers(given: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """One column as (empty, float64 values): NaN where a value is empty or not a number."""
    if _numeric(given):
        values = given.to_numpy(dtype="float64")
        return np.isnan(values), values
    empty = given.isna().to_numpy(dtype=bool)
    if given.dtype == object:  # from JSON or Python: a blank is empty too (a CSV's is NaN)
        empty = empty | _blank(given)
    values = pd.to_numeric(given, errors="coerce").astype("float64")
    return empty, values.to_numpy(dtype="float64", na_value=np.nan)


def calendar_days(values: pd.Series) -> np.ndarray:
    """Naive ``datetime64[ns]`` days (the exchange's calendar date, any time of day dropped);
    NaT where a value does not parse or lies outside what ``datetime64[ns]`` holds (years
    1678 to 2261).

    A value with a UTC offset counts on its own wall clock's date (``2024-03-11T16:00-04:00``
    is the 11th), whatever the other values' offsets: a feed stamped in exchange time changes
    offset at each daylight-saving switch.
    """
    if isinstance(values.dtype, np.dtype) and values.dtype.kind == "M":  # parsed already
        days = values.to_numpy().astype("datetime64[D]")  # floors to the day
    else:
        days = _wall_clock_days(values)
    days[(days < _FIRST_DAY) | (days > _LAST_DAY)] = np.datetime64("NaT")
    return days.astype("datetime64[ns]")


def _wall_clock_days(values: pd.Series) -> np.ndarray:
    """``values`` parsed as ``datetime64[D]`` days on their own wall clocks (NaT: no date).

    One vectorised parse in the common case; one by one where it cannot serve: offsets that
    differ (pandas will not choose a zone for them), or values in another format than the
    first (whose format pandas infers and applies to all).
    """
    try:
        dates = pd.to_datetime(values, errors="coerce")
    except ValueError:  # mixed offsets: pandas 3 refuses to pick one
        return _one_by_one(values)
    if dates.dtype == object:  # mixed offsets, where pandas leaves the values as objects
        return _one_by_one(values)
    if dates.dt.tz is not None:
        dates = dates.dt.tz_localize(None)
    days = dates.to_numpy().astype("datetime64[D]")
    missed = (dates.isna() & values.notna()).to_numpy()
    if missed.any():  # another format than the first value's, or no date at all
        days[missed] = _one_by_one(values[missed])
    return days


def _one_by_one(values: pd.Series) -> np.ndarray:
    """Each value parsed on its own, in its own format: its wall clock's day."""
    days = np.full(len(values), np.datetime64("NaT"), dtype="datetime64[D]")
    for i, value in enumerate(values):
        when = pd.to_datetime(value, errors="coerce")
        if when is not pd.NaT:
            days[i] = np.datetime64(when.date())  # the date on its own clock, offset ignored
    return days


def describe(dropped: Counter[str]) -> str:
    """``"3 dropped (2 not_finite, 1 bad_date)"``, or ``""`` when nothing was."""
    if not dropped:
        return ""
    parts = ", ".join(f"{n} {reason}" for reason, n in dropped.most_common())
    return f"{sum(dropped.values())} dropped ({parts})"
