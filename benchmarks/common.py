"""Helpers shared by the benchmark scripts (run as `python benchmarks/bench_*.py`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def best_of(repeat: int, fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """The fastest of ``repeat`` runs of ``fn(*args)`` in seconds, and its last result.

    The minimum, not the mean: on a shared, noisy machine it is the best estimate of the
    work itself.
    """
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, value


def met(ok: bool) -> str:
    """How a target reads in the printed table."""
    return "met" if ok else "MISSED"
