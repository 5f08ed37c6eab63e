"""Progress bars on long work, shown only when someone is watching a terminal."""

from __future__ import annotations

import sys
from typing import Any


class _Silent:
    """Stands in for a tqdm bar when stderr is not a terminal (DVC logs, CI, pipes)."""

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


def progress_bar(**kwargs: Any) -> Any:
    """A tqdm bar on a terminal, else a silent stand-in (and no tqdm import, ~40 ms saved).

    Args:
        **kwargs: Passed to ``tqdm.tqdm`` (total, desc, unit, ...).
    """
    if not sys.stderr.isatty():
        return _Silent()
    from tqdm import tqdm

    return tqdm(**kwargs)
