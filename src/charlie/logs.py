"""Logging to the console and to ``logs/<stage>-<timestamp>.log``, as the seed describes."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path

from charlie.errors import CharlieError

LOG_DIR_ENV = "CHARLIE_LOG_DIR"
LOG_LEVEL_ENV = "CHARLIE_LOG_LEVEL"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SECRETS: set[str] = set()
_CREDENTIALS = (
    re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/]{8,}=*"),  # RFC 6750's token68
    re.compile(r"(?i)\b((?:api_token|api_key|apikey|access_token|token|password)=)[^&\s\"',;]+"),
    re.compile(r"(?i)(\"(?:authorization|api_token|access_token|token)\"\s*:\s*\")[^\"]+"),
)


def register_secret(secret: str | None) -> None:
    """A value (an API key, a token) never to print or log, wherever it turns up."""
    if secret and len(secret) >= 4:
        _SECRETS.add(secret)


def redact(text: str) -> str:
    """``text`` with registered secrets and anything shaped like a credential replaced by
    ``***``: ``Bearer <token>``, ``api_token=...``, ``"authorization": "..."``, whatever the
    source (a server's error body echoing our headers, an exception's URL)."""
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    for pattern in _CREDENTIALS:
        text = pattern.sub(r"\1***", text)
    return text


class RedactingFilter(logging.Filter):
    """For loggers outside ``charlie`` (urllib3's request lines): the message through
    :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class RedactingFormatter(logging.Formatter):
    """A formatter whose output (message and traceback alike) goes through :func:`redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def console_level() -> str:
    """``$CHARLIE_LOG_LEVEL`` (default INFO, DEBUG with ``--verbose``), or one sentence naming
    the allowed levels."""
    level = os.environ.get(LOG_LEVEL_ENV, "DEBUG" if verbose() else "INFO").strip().upper()
    if level not in LEVELS:
        raise CharlieError(f"{LOG_LEVEL_ENV}={os.environ[LOG_LEVEL_ENV][:40]!r} is not a log "
                           f"level; use one of {', '.join(LEVELS)}.")  # fmt: skip
    return level


def setup_logging(stage: str) -> Path:
    """Send the ``charlie`` logger to stderr (concise) and to a per-run log file (detailed).

    The directory is ``$CHARLIE_LOG_DIR`` (default ``logs``); the console level is
    ``$CHARLIE_LOG_LEVEL`` (default INFO). The file always gets DEBUG.

    Args:
        stage: The stage name, used in the file name.

    Returns:
        The path of the log file.
    """
    level = console_level()
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
    console.setLevel(level)
    console.setFormatter(RedactingFormatter("%(message)s"))
    logger.addHandler(console)

    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setLevel(logging.DEBUG)
    file_handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(file_handler)
    logger.debug("log file %s", path)
    return path


# Library messages that tell a Charlie user nothing they can act on, each silenced where it is
# emitted (its own logger, or its exact warning text) and with the reason; `--verbose` (or
# CHARLIE_VERBOSE=1) shows them all. Everything else the libraries say still shows.
NOISY_LOGGERS: tuple[tuple[str, str, str], ...] = (
    ("DeepSpeed", "Setting accelerator to CPU",
     "no GPU here: DeepSpeed falls back to its CPU accelerator, as Charlie does"),
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward",
     "an optional kernel from the hub; bitsandbytes computes 4-bit on the CPU without it"),
)  # fmt: skip
NOISY_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated",
     "TRL and PEFT read transformers' old property name; Charlie's configs use the new key"),
    (FutureWarning, r"`gradient_checkpointing_enable` is deprecated",
     "PEFT's prepare_model_for_kbit_training (QLoRA) calls the old method name"),
)  # fmt: skip
VERBOSE_ENV = "CHARLIE_VERBOSE"


class _DropMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def verbose() -> bool:
    """``--verbose`` was given (or ``$CHARLIE_VERBOSE`` is 1/true)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def quiet_libraries() -> None:
    """Silence :data:`NOISY_LOGGERS` and :data:`NOISY_WARNINGS` (unless :func:`verbose`), and
    the libraries' progress bars when no terminal shows them (the stage logs progress lines).

    Call before the libraries load: the filters sit on the loggers they create later.
    """
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' too
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if verbose():
        return
    import warnings

    for name, start, _why in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages((start,)))
    for category, message, _why in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
