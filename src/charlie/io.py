"""Atomic output writing: a crash leaves the previous outputs intact, never a half-written file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_outputs(*paths: Path | str) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``paths``; on success rename them all into place.

    The temporaries live in the destination directories, so the final ``os.replace`` is an
    atomic rename on the same filesystem. If the body raises, every temporary is removed and
    the destinations are untouched. The renames happen only after every file was written and
    fsynced, so a group of outputs (records, rejects, report) is replaced together.

    Args:
        *paths: Destination files. Parent directories are created.

    Yields:
        One temporary path per destination, in the same order.
    """
    finals = [Path(p) for p in paths]
    temps: list[Path] = []
    mode = 0o666 & ~_umask()
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
            os.close(fd)
            os.chmod(tmp, mode)  # mkstemp makes 0600 files; outputs should follow the umask
            temps.append(Path(tmp))
        yield temps
        for tmp in temps:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        for tmp, final in zip(temps, finals, strict=True):
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: Path | str) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` whole.

    A failure removes the temporary directory and leaves any previous ``path`` as it was, so
    a reader never sees a half-written dataset.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    old = final.parent / f".{final.name}.old"
    try:
        yield tmp
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
