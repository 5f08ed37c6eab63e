"""Logging to the console and to ``logs/<stage>-<timestamp>.log``, as the seed describes."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

LOG_DIR_ENV = "CHARLIE_LOG_DIR"
LOG_LEVEL_ENV = "CHARLIE_LOG_LEVEL"


def setup_logging(stage: str) -> Path:
    """Send the ``charlie`` logger to stderr (concise) and to a per-run log file (detailed).

    The directory is ``$CHARLIE_LOG_DIR`` (default ``logs``); the console level is
    ``$CHARLIE_LOG_LEVEL`` (default INFO). The file always gets DEBUG.

    Args:
        stage: The stage name, used in the file name.

    Returns:
        The path of the log file.
    """
    log_dir = Path(os.environ.get(LOG_DIR_ENV, "logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = log_dir / f"{stage}-{stamp}.log"
    suffix = 1
    while path.exists():  # two runs in one second must not share a file
        path = log_dir / f"{stage}-{stamp}-{suffix}.log"
        suffix += 1

    logger = logging.getLogger("charlie")
    logger.handlers.clear()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False

    console = logging.StreamHandler(sys.stderr)
    console.setLevel(os.environ.get(LOG_LEVEL_ENV, "INFO").upper())
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)

    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setLevel(logging.DEBUG)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(file_handler)
    logger.debug("log file %s", path)
    return path
