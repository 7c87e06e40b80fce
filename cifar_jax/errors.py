"""Errors the user can fix; the entry point prints them as one line instead of a traceback."""


class CifarJaxError(Exception):
    """Base class: something in the user's input is wrong, and the message says how to fix it."""


class ConfigError(CifarJaxError, ValueError):
    """A config value is invalid; the message names the field."""


class DataError(CifarJaxError, ValueError):
    """A data set is missing, truncated or malformed; the message says what to do."""


class CheckpointError(CifarJaxError, ValueError):
    """A checkpoint or workdir does not match the config, or cannot be restored."""


class WorkdirInUse(CheckpointError):
    """Another live process holds the workdir's lock (a sweep worker skips such a group)."""


class UsageError(CifarJaxError):
    """A command-line flag is missing, unknown or malformed."""


class Interrupted(CifarJaxError):
    """The run stopped at a step boundary after saving (SIGTERM, Ctrl-C); rerunning the same
    command resumes it. Not a mistake: the entry point prints it without "error:" and exits with
    `exit_code` (75 after SIGTERM, 130 after Ctrl-C; see `interrupts`)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def brief(error: BaseException, max_chars: int = 240) -> str:
    """One line from an exception, short enough to sit inside a one-line user message."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."
