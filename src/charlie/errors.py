"""Errors a user can cause: they end in one clear sentence and a non-zero exit, never a traceback."""

from __future__ import annotations

from collections.abc import Iterable


class CharlieError(Exception):
    """A problem with the user's input or configuration.

    The message is one sentence that says what is wrong and, where possible, what is allowed.
    """

    exit_code = 2


class ConfigError(CharlieError):
    """A configuration key or value that is not allowed."""


class QualityGateError(CharlieError):
    """A stage wrote its outputs, but they fail a quality gate (e.g. too few parsed actions).

    Exit code 1, not 2: the input was valid; the result is not good enough to build on.
    """

    exit_code = 1


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a mistyped ``word``, or ''."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
