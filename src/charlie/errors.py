"""Errors a user can cause: they end in one clear sentence and a non-zero exit, never a traceback."""


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
