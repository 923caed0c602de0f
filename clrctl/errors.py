"""The one error family of clrctl (and :func:`warn`, its one way to warn). The CLI turns each into a one-line message and an exit code
(SPEC.md): 2 for bad input, 1 for a run that ended badly, 130 for an interruption."""


ECHO_LIMIT = 200  # characters of a user's value that an error message quotes


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` as an error message quotes it: cut to ``limit`` characters with an
    ellipsis, so that a huge value (a million-item list) still makes one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


class ClrctlError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""

    exit_code = 2


class ConfigError(ClrctlError):
    """A config that cannot be run: unknown key, wrong type, bad value, missing file."""


class InputError(ClrctlError):
    """Bad command-line input: a missing, unfinished or unreadable run, a bad argument."""


class DataError(ClrctlError):
    """A data file that cannot be read (a corrupt or truncated image): names the file.

    Bad input (exit 2) when met before a run starts; a run that meets it mid-way fails (exit 1)."""


class RunFailed(ClrctlError):
    """A run that started and ended badly (diverged, failed)."""

    exit_code = 1


class Interrupted(ClrctlError):
    """Ctrl-C / SIGTERM: files were flushed and the run marked ``interrupted``."""

    exit_code = 130


class Regression(ClrctlError):
    """``compare --gate``: a candidate is worse than the baseline beyond the tolerance."""

    exit_code = 1


class ClrctlWarning(UserWarning):
    """Something the user should know that does not stop the command (e.g. an empty config
    file); the CLI prints each as one ``warning:`` line on stderr."""


_warned: set[str] = set()


def warn(message: str) -> None:
    """Tell the user about a setting that is ignored or odd, once per command however often it
    is met (a config is validated more than once); the CLI prints it as one ``warning:`` line
    and starts each command with :func:`forget_warnings`."""
    import warnings

    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, ClrctlWarning, stacklevel=2)


def forget_warnings() -> None:
    """A new command: each of its warnings is shown again once."""
    _warned.clear()
