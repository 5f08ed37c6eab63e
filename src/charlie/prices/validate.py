"""Price bars are data, and data gets validated: every frame a provider returns goes through here.

``clean_bars`` drops the rows no prompt may quote and counts them by reason; what remains is
finite, positive, consistent and one row per date. A ticker left with no usable row is not
served (the next provider is tried; with none left, the stage fails naming it).

Reasons, in the order they are checked (a row is counted under the first that applies):

* ``bad_date``: the date does not parse.
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
"""

from __future__ import annotations

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


def clean_bars(raw: pd.DataFrame) -> tuple[pd.DataFrame, Counter[str]]:
    """``raw`` (a ``date`` column and the price columns, any dtypes) without the rows that
    fail a check, as float64 with naive normalised dates, sorted; and the drops by reason."""
    frame = raw.copy()
    dropped: Counter[str] = Counter()
    reason = pd.Series("", index=frame.index, dtype=object)

    def mark(mask: pd.Series, name: str) -> None:
        fresh = mask & (reason == "")
        reason[fresh] = name

    frame["date"] = calendar_dates(frame["date"])
    mark(frame["date"].isna(), "bad_date")
    parsed = {}
    for column in (*PRICES, "volume"):
        given = frame[column]
        empty = given.isna()
        if given.dtype == object:  # text from a CSV or JSON: a blank is empty too
            empty |= given.astype(str).str.strip().eq("")
        parsed[column] = (empty, pd.to_numeric(given, errors="coerce").astype("float64"))
    mark(parsed["close"][0], "missing_close")
    for column, (empty, values) in parsed.items():
        mark(~empty & values.isna(), "not_numeric")
        frame[column] = values
    mark(frame[["open", "high", "low", "volume"]].isna().any(axis=1), "missing_value")
    values = frame[[*PRICES, "volume"]].to_numpy(dtype="float64", na_value=np.nan)
    mark(pd.Series(np.isinf(values).any(axis=1), index=frame.index), "not_finite")
    mark((frame[list(PRICES)] <= 0).any(axis=1), "non_positive_price")
    mark((frame["volume"] < 0) | (frame["volume"] > MAX_VOLUME), "implausible_volume")
    top = frame[["open", "close"]].max(axis=1)
    bottom = frame[["open", "close"]].min(axis=1)
    inconsistent = (frame["high"] < top * (1 - RANGE_TOLERANCE)) | (
        frame["low"] > bottom * (1 + RANGE_TOLERANCE)
    )
    mark(inconsistent, "inconsistent_range")
    dropped.update(reason[reason != ""])
    frame = frame.loc[reason == ""]

    columns = ["date", *PRICES, "volume"]
    repeats = frame.duplicated(columns, keep="first")
    dropped["duplicate_date"] += int(repeats.sum())
    frame = frame.loc[~repeats]
    conflicts = frame.duplicated("date", keep=False)
    dropped["conflicting_duplicate"] += int(conflicts.sum())
    frame = frame.loc[~conflicts]
    frame = frame.loc[:, columns].sort_values("date").reset_index(drop=True)
    return frame, Counter({k: v for k, v in dropped.items() if v})


def calendar_dates(values: pd.Series) -> pd.Series:
    """Naive, normalised ``datetime64[ns]`` dates (the exchange's calendar date); NaT where a
    value does not parse."""
    dates = pd.to_datetime(values, errors="coerce")
    if dates.dtype == object:  # mixed zones: each value on its own
        dates = pd.Series([pd.to_datetime(v, errors="coerce") for v in values], index=values.index)
        dates = dates.map(lambda d: d.tz_localize(None) if d is not pd.NaT and d.tzinfo else d)
        dates = pd.to_datetime(dates)
    elif dates.dt.tz is not None:
        dates = dates.dt.tz_localize(None)
    return dates.dt.normalize().astype("datetime64[ns]")


def describe(dropped: Counter[str]) -> str:
    """``"3 dropped (2 not_finite, 1 bad_date)"``, or ``""`` when nothing was."""
    if not dropped:
        return ""
    parts = ", ".join(f"{n} {reason}" for reason, n in dropped.most_common())
    return f"{sum(dropped.values())} dropped ({parts})"
