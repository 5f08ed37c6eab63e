"""Stage I/O: outputs written atomically (a crash leaves the previous ones intact, never a
half-written file), and another stage's dataset read without writing into it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from charlie.errors import CharlieError


def require_dataset_dict(path: Path | str, made_by: str = "charlie dataset") -> Path:
    """``path`` as a Path, or one sentence saying it is not a saved DatasetDict and what makes it."""
    path = Path(path)
    if not (path / "dataset_dict.json").is_file():
        raise CharlieError(f"{path} is not a DatasetDict; run `{made_by}` first.")
    return path


def read_json_object(path: Path | str) -> dict[str, Any]:
    """A JSON file holding one object (a report, a model's config.json), or one sentence why not."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CharlieError(f"{path} is not valid JSON (line {exc.lineno}).") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CharlieError(f"{path} cannot be read as JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise CharlieError(f"{path} must hold a JSON object, not {type(data).__name__}.")
    return data


def load_dataset_dir(path: Path | str) -> Any:
    """A DatasetDict another stage saved, opened so that nothing is ever written into it.

    datasets writes the results of map/filter as cache-*.arrow files beside the data it read:
    into the producing stage's output, which DVC then sees modified (and reruns). With caching
    off they go to a temporary directory instead, deleted at exit.
    """
    import datasets

    datasets.disable_caching()
    return datasets.load_from_disk(str(path))


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
