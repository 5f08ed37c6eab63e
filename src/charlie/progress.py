"""Progress on long work: a bar at a terminal, a line every so often everywhere else.

Under ``dvc repro``, a Kubeflow pod or CI nobody watches a terminal, but someone reads the log
later (or tails it now): there a stage logs ``<desc>: done/total (share), rate, ETA`` every
``$CHARLIE_PROGRESS_S`` seconds (default 30) and once at the end, to the console and the
stage's log file alike.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

PROGRESS_ENV = "CHARLIE_PROGRESS_S"
DEFAULT_EVERY_S = 30.0
log = logging.getLogger("charlie.progress")


def progress_every_s() -> float:
    """Seconds between progress lines without a terminal (``$CHARLIE_PROGRESS_S``, default 30)."""
    try:
        return max(0.0, float(os.environ.get(PROGRESS_ENV, DEFAULT_EVERY_S)))
    except ValueError:
        return DEFAULT_EVERY_S


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(desc: str, done: float, total: float | None, elapsed: float,
                  unit: str = "it") -> str:  # fmt: skip
    """``generate: 128/453 rows (28%), 3.1 rows/s, ETA 1m45s`` (no share or ETA without a total)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    units = unit if unit.endswith("s") or unit == "B" else f"{unit}s"
    if unit == "B":
        shown = f"{done / 1e6:,.1f} MB" + (f"/{total / 1e6:,.1f} MB" if total else "")
        speed = f"{rate / 1e6:,.1f} MB/s"
    else:
        shown = f"{done:,.0f}" + (f"/{total:,.0f}" if total else "") + f" {units}"
        speed = f"{rate:,.1f} {units}/s"
    line = f"{desc}: {shown}"
    if total:
        line += f" ({done / total:.0%})"
    line += f", {speed}"
    if total and rate > 0 and done < total:
        line += f", ETA {duration((total - done) / rate)}"
    elif total and done >= total:
        line += f", done in {duration(elapsed)}"
    return line


class _Periodic:
    """Stands in for a tqdm bar when stderr is not a terminal: a log line every ``every_s``."""

    def __init__(self, total: float | None = None, desc: str = "progress", unit: str = "it",
                 every_s: float | None = None, **_: Any) -> None:  # fmt: skip
        self.total, self.desc, self.unit = total, desc, unit
        self.every_s = progress_every_s() if every_s is None else every_s
        self.done = 0.0
        self.started = self.last = time.monotonic()

    def __enter__(self) -> _Periodic:
        return self

    def __exit__(self, *exc: object) -> None:
        now = time.monotonic()
        if exc[0] is None and self.done and now - self.started >= self.every_s:
            self._emit(now)  # a final line, only for work long enough to have had lines

    def update(self, n: float = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._emit(now)

    def _emit(self, now: float) -> None:
        elapsed = now - self.started
        log.info("%s", progress_line(self.desc, self.done, self.total, elapsed, self.unit))


def progress_bar(**kwargs: Any) -> Any:
    """A tqdm bar on a terminal, else periodic log lines (and no tqdm import, ~40 ms saved).

    Args:
        **kwargs: Passed to ``tqdm.tqdm`` (total, desc, unit, ...).
    """
    if not sys.stderr.isatty():
        return _Periodic(**kwargs)
    from tqdm import tqdm

    return tqdm(**kwargs)
