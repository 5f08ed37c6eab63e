"""Which commit the working tree is at, for manifests and pipeline version names."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_state(cwd: Path | str | None = None) -> dict[str, str | bool | None]:
    """``{"commit": full hash or None, "dirty": bool or None}``; None where git cannot tell.

    Dirty means tracked files differ from the commit (untracked files do not count).
    """

    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}
