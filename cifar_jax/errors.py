"""Errors the user can fix; the entry point prints them as one line instead of a traceback."""


class CifarJaxError(Exception):
    """Base class: something in the user's input is wrong, and the message says how to fix it."""


class ConfigError(CifarJaxError, ValueError):
    """A config value is invalid; the message names the field."""


class DataError(CifarJaxError, ValueError):
    """A data set is missing, truncated or malformed; the message says what to do."""


class CheckpointError(CifarJaxError, ValueError):
    """A checkpoint or workdir does not match the config, or cannot be restored."""


class UsageError(CifarJaxError):
    """A command-line flag is missing, unknown or malformed."""
