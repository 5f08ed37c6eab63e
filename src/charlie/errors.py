"""Errors a user can cause: they end in one clear sentence and a non-zero exit, never a traceback."""


class CharlieError(Exception):
    """A problem with the user's input or configuration.

    The message is one sentence that says what is wrong and, where possible, what is allowed.
    """

    exit_code = 2


class ConfigError(CharlieError):
    """A configuration key or value that is not allowed."""
