"""Helpers shared by the benchmark scripts (run as `python benchmarks/bench_*.py`)."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
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


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children that have been waited for.

    One clock for both kinds of measurement: in-process work shows in ``process_time``, a
    ``subprocess.run`` in ``RUSAGE_CHILDREN`` (counted once the child is reaped).
    """
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class Measured:
    """One call's medians over the rounds of :func:`interleaved`."""

    wall: float  # seconds, median
    cpu: float  # seconds, median (see cpu_seconds)
    value: Any  # the last round's result


def interleaved(repeat: int, *calls: Callable[[], Any]) -> list[Measured]:
    """Run ``calls`` in turn for ``repeat`` rounds (A B A B ...); each one's median wall and CPU.

    Interleaved, a change in the machine's load falls on every call alike; the median drops
    the odd disturbed round; CPU time leaves out the time spent waiting for a core. A ratio
    of CPU medians is therefore the code's, which a ratio of wall-clock bests on a shared
    machine is not (bench_parse's moved from 1.41 to 2.05 between two runs).
    """
    walls: list[list[float]] = [[] for _ in calls]
    cpus: list[list[float]] = [[] for _ in calls]
    values: list[Any] = [None] * len(calls)
    for _ in range(repeat):
        for i, call in enumerate(calls):
            wall, cpu = time.perf_counter(), cpu_seconds()
            values[i] = call()
            cpus[i].append(cpu_seconds() - cpu)
            walls[i].append(time.perf_counter() - wall)
    return [
        Measured(statistics.median(w), statistics.median(c), v)
        for w, c, v in zip(walls, cpus, values, strict=True)
    ]


def met(ok: bool) -> str:
    """How a target reads in the printed table."""
    return "met" if ok else "MISSED"
