"""Stage I/O: outputs written atomically (a crash leaves the previous ones intact, never a
half-written file), and another stage's dataset read without writing into it."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
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


def sha256_file(path: Path | str) -> str:
    """The hex SHA-256 of a file's bytes, read in chunks (a model's weights need not fit)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


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


MARKER = ".charlie-output"
"""Written into every directory ``atomic_directory`` makes: the sign that replacing it is ours."""


def _kind(path: Path) -> str:
    """What is at ``path``, in words, for a refusal."""
    import stat

    mode = path.stat().st_mode
    kinds = {stat.S_ISCHR: "character device", stat.S_ISBLK: "block device",
             stat.S_ISFIFO: "named pipe", stat.S_ISSOCK: "socket", stat.S_ISDIR: "directory"}  # fmt: skip
    return next((name for test, name in kinds.items() if test(mode)), "special file")


def require_distinct(
    outputs: dict[str, Path | str], inputs: dict[str, Path | str] | None = None
) -> None:
    """One sentence when two outputs are one path (or one holds the other), or an output is (or
    holds) an input.

    Args:
        outputs: Flag or role -> path the stage writes (a file or a directory).
        inputs: Flag or role -> path the stage reads.
    """
    seen: dict[Path, str] = {}
    for name, path in outputs.items():
        real = Path(path).resolve()
        if real in seen:
            raise CharlieError(f"{name} and {seen[real]} are the same path ({path}): each "
                               "output needs its own.")  # fmt: skip
        for other, other_name in seen.items():
            if other in real.parents or real in other.parents:
                inner, outer = (name, other_name) if other in real.parents else (other_name, name)
                raise CharlieError(f"{inner} is inside {outer}, which is replaced whole: "
                                   "choose paths apart.")  # fmt: skip
        seen[real] = name
    for name, path in (inputs or {}).items():
        real = Path(path).resolve()
        for out, output in seen.items():
            if real == out or out in real.parents:
                raise CharlieError(f"{output} ({out}) would overwrite the input {name} ({path}); "
                                   "write the output elsewhere.")  # fmt: skip


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_STARTED = time.time()


def _roll_forward(journal: Path) -> None:
    """Finish the renames a killed run's journal lists (those whose temporary is still there)."""
    if not journal.is_file():
        return
    try:
        pairs = json.loads(journal.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pairs = []
    for tmp, final in pairs:
        if Path(tmp).is_file():
            os.replace(tmp, final)
    journal.unlink(missing_ok=True)


def _remove_stale_temporaries(final: Path) -> None:
    """Delete ``final``'s temporaries that a killed run left (older than this process)."""
    if not final.parent.is_dir():
        return
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            if stale.is_file() and stale.stat().st_mtime < _STARTED:
                stale.unlink()


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
    require_distinct({str(p): p for p in finals})
    journal = finals[0].parent / f".{finals[0].name}.commit.json"
    _roll_forward(journal)
    for final in finals:
        _remove_stale_temporaries(final)
    for final in finals:
        if final.exists() and not final.is_file():
            raise CharlieError(f"refusing to replace {final}: it is a {_kind(final)}, not a "
                               "regular file.")  # fmt: skip
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
        # The renames are one unit: the journal, written first, lets the next run finish them
        # if this process dies between two of them (a new records file beside an old report).
        if len(finals) > 1:
            pairs = [[str(t), str(f)] for t, f in zip(temps, finals, strict=True)]
            journal.write_text(json.dumps(pairs), encoding="utf-8")
        for tmp, final in zip(temps, finals, strict=True):
            os.replace(tmp, final)
        journal.unlink(missing_ok=True)
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: Path | str) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` whole.

    A failure removes the temporary directory and leaves any previous ``path`` as it was, so
    a reader never sees a half-written dataset. Only a directory this function made (it holds
    ``MARKER``) or an empty one is replaced: anything else at ``path`` is refused, so that a
    mistyped ``--out`` never deletes a user's files.
    """
    final = Path(path)
    if final.exists() and not final.is_dir():
        raise CharlieError(f"refusing to replace {final}: it is a {_kind(final)}, not a "
                           "directory.")  # fmt: skip
    if final.is_dir() and any(final.iterdir()) and not (final / MARKER).is_file():
        raise CharlieError(f"refusing to replace {final}: a directory Charlie did not write "
                           f"(no {MARKER} in it) and not empty; remove it or choose another "
                           "output.")  # fmt: skip
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 directories; follow the umask
    old = final.parent / f".{final.name}.old"
    try:
        yield tmp
        (tmp / MARKER).write_text("written by charlie; replaced whole on the next run\n")
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
