"""Files written whole or not at all: atomic replace, strict JSON, and the one-line error of
a file that could not be written. The lowest layer of clrctl's file handling (the run
directory, checkpoints and sweeps build on it); stdlib only."""

from __future__ import annotations

import csv
import json
import math
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from clrctl.errors import InputError, RunFailed

TEMP_SUFFIX = ".tmp"  # temporary files of atomic writes: ".<name>.<random>.tmp"


class WriteFailed(RunFailed):
    """A file of a run directory could not be written (disk full, read-only, file too large):
    one line naming the file. Exit 1 once the run started; before it starts, callers refuse
    with an :class:`InputError` instead (exit 2)."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(f"{path}: cannot write ({os_reason(err)})")
        self.path, self.reason = Path(path), os_reason(err)


def failure_line(err: BaseException) -> str:
    """One line for an error that ended a run: an OSError as ``FILE: reason`` (never a bare
    ``[Errno 28] …``), anything else as its own message."""
    if isinstance(err, OSError):
        return f"{err.filename}: {os_reason(err)}" if err.filename else os_reason(err)
    return str(err)


def os_reason(err: OSError) -> str:
    """``No space left on device`` -> ``no space left on device`` (for a message's parenthesis)."""
    text = err.strerror or str(err) or err.__class__.__name__
    return text[:1].lower() + text[1:]


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, dumps_strict(payload) + "\n")


def dumps_strict(payload: Any) -> str:
    """JSON that any strict parser reads: a NaN or infinite float (a diverged loss) becomes
    ``null``, as ``compare --format json`` writes it; ``json.dumps`` alone writes bare ``NaN``."""
    return json.dumps(finite_or_none(payload), indent=2, sort_keys=False, default=str, allow_nan=False)


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float inside dicts, lists and tuples replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)


@contextmanager
def atomic_file(path: Path, mode: str = "w", *, fsync: bool = True, **open_args: Any) -> Iterator[IO]:
    """A temporary file beside ``path`` that replaces it (``os.replace``) when the block ends
    without error, and is removed otherwise: a reader never sees half a file.

    The temporary file is created like ``open()`` creates files, mode 0o666 less the umask
    (``tempfile.mkstemp``'s 0600 would survive the rename and lock teammates out)."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
        except OSError as err:
            raise WriteFailed(path, err) from err
    try:
        with os.fdopen(fd, mode, **open_args) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:  # disk full, file too large: one line naming the file, not a bare errno
        remove_quietly(tmp)
        raise WriteFailed(path, err) from err
    except BaseException:
        remove_quietly(tmp)
        raise


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """OSErrors of the block become a :class:`WriteFailed` naming ``path`` (a failed
    ``write()`` names no file of its own)."""
    try:
        yield
    except OSError as err:
        raise WriteFailed(path, err) from err


def remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # (a read-only file system: nothing was written there either)
        pass


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object (every JSON file of a run is one); anything else is one InputError line."""
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable ({err.__class__.__name__})") from None
    if not isinstance(found, dict):
        raise InputError(f"{path}: unreadable (a JSON {type(found).__name__}, not an object)")
    return found


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a run CSV as dicts of strings (blank = no value)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
