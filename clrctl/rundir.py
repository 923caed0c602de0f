"""The run directory: the only module that writes under ``runs/`` (SPEC.md, "Run directory").

A run directory holds ``config.yaml``, ``run.json`` (provenance and status), ``metrics.csv``,
``epochs.csv`` (train), ``summary.json`` and ``plots/``. JSON files are written atomically
(temporary file, then ``os.replace``) so a reader never sees half a file; CSVs are appended
and flushed so a killed run keeps what it logged. ``status`` stays ``running`` until the run
ends, which is how ``compare`` tells a finished run from a half-written one.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import platform
import socket
import secrets
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Optional

import yaml

from clrctl import __version__
from clrctl.errors import InputError

TERMINAL_STATUSES = ("completed", "diverged", "interrupted", "failed")
TEMP_SUFFIX = ".tmp"  # temporary files of atomic writes: ".<name>.<random>.tmp"
# What a run directory holds before its first result (see holds_no_results)
BOOKKEEPING = ("run.json", "config.yaml", "group.json")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def default_run_path(runs_root: str | Path, name: str) -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``… if that second is taken."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(runs_root) / f"{name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)


@contextmanager
def atomic_file(path: Path, mode: str = "w", *, fsync: bool = True, **open_args: Any) -> Iterator[IO]:
    """A temporary file beside ``path`` that replaces it (``os.replace``) when the block ends
    without error, and is removed otherwise: a reader never sees half a file.

    The temporary file is created like ``open()`` creates files, mode 0o666 less the umask
    (``tempfile.mkstemp``'s 0600 would survive the rename and lock teammates out)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, mode, **open_args) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


class CsvLog:
    """An append-only CSV with a fixed header; rows are dicts, missing values stay blank."""

    def __init__(self, path: Path, columns: list[str]):
        self.path = path
        self.columns = columns
        new = not path.exists() or path.stat().st_size == 0
        self._handle = open(path, "a", newline="", encoding="utf-8")
        self._rows = csv.writer(self._handle, lineterminator="\n")
        if new:
            self._rows.writerow(columns)
            self.flush()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        # A plain writer over the columns (DictWriter's per-row checks cost the trainer ~2%);
        # csv writes None as "" and a float as repr(): its shortest exact round-trip.
        columns = self.columns
        self._rows.writerows([row.get(c) for c in columns] for row in rows)

    def write_lists(self, rows: Iterable[list[Any]]) -> None:
        """Rows already in column order (the trainer's per-step rows): no per-row reordering."""
        self._rows.writerows(rows)

    def flush(self) -> None:
        """To the OS: a killed process keeps every flushed row (the trainer's hot path)."""
        self._handle.flush()

    def sync(self) -> None:
        """To the disk (fsync): when closed (checkpoints, too, survive a killed process, not a
        power cut: see clrctl.checkpoint.save_atomic)."""
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if not self._handle.closed:
            self.sync()
            self._handle.close()


def truncate_csv(path: Path, columns: list[str], key: str, first: int, last: int, *,
                 check_only: bool = False) -> list[str]:
    """Cut a run CSV back to a checkpoint (resume): keep the rows whose ``key`` is at most
    ``last`` — they must be exactly ``first``…``last``, in order — and drop the rest (rows
    logged after the checkpoint are computed again). Repaired on the way: a last line cut
    short (a killed process, a full disk) is dropped, and a file with no header yet (none,
    empty, cut inside its header) gets one when it should hold no rows. Returns what was
    repaired (one phrase each); anything else that is wrong is one InputError line.
    ``check_only``: the same checks and answer, the file left as it is."""
    lines, repaired, exists = _complete_lines(path)
    if not lines:
        if last >= first:
            state = "without a header" if exists else "missing"
            raise InputError(f"{path}: {state}, but the checkpoint has {last - first + 1} row(s) of it; "
                             "cannot resume")
        if exists:  # (a missing file: the trainer creates it)
            repaired.append(f"{path.name}: header written")
        if not check_only:
            _write_csv(path, columns, [])
        return repaired
    rows = _rows(path, lines, columns)
    index = columns.index(key)
    kept = [(_whole(path, number, key, row[index]), row) for number, row in enumerate(rows, start=2)]
    kept = [(value, row) for value, row in kept if value <= last]
    values = [value for value, _ in kept]
    if values != list(range(first, last + 1)):
        raise InputError(f"{path}: {_gap(values, first, last, key)}; the checkpoint is at {key} {last}; "
                         "cannot resume")
    if (repaired or len(kept) != len(rows)) and not check_only:
        _write_csv(path, columns, [row for _, row in kept])
    return repaired


def _complete_lines(path: Path) -> tuple[list[str], list[str], bool]:
    """The file's lines but a last one cut short (each row is written with its newline), what
    was dropped, and whether the file exists."""
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: unreadable ({err.__class__.__name__}); cannot resume") from None
    lines = [] if text is None else text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
        return lines, [f"{path.name}: dropped a last line cut short"], True
    return lines, [], text is not None


def _rows(path: Path, lines: list[str], columns: list[str]) -> list[list[str]]:
    """The rows under a header that must be ``columns``, each with as many values."""
    try:
        header, *rows = list(csv.reader(lines))
    except csv.Error as err:
        raise InputError(f"{path}: unreadable ({err}); cannot resume") from None
    if header != columns:
        raise InputError(f"{path}: columns {','.join(header)[:200]} are not those of this run "
                         f"({','.join(columns)}); cannot resume")
    for number, row in enumerate(rows, start=2):
        if len(row) != len(columns):
            raise InputError(f"{path}: line {number} has {len(row)} values, not {len(columns)}; cannot resume")
    return rows


def _whole(path: Path, number: int, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{path}: line {number}: {key} {value[:40]!r} is not a whole number; "
                         "cannot resume") from None


def _gap(values: list[int], first: int, last: int, key: str) -> str:
    """What is wrong with ``values`` where ``first``…``last`` should be."""
    for want, got in zip(range(first, last + 1), values):
        if got != want:
            return f"rows of {key} {want} missing or out of order (found {got})"
    if len(values) > last - first + 1:
        return f"rows of {key} up to {last} repeated"
    return f"rows end at {key} {values[-1]}" if values else "no rows"


def _write_csv(path: Path, columns: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")  # (as CsvLog writes: the kept rows keep their bytes)
    writer.writerow(columns)
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


class RunDir:
    """One run's directory. Create it with :meth:`create` (never overwrites) or :meth:`open`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._writer: Optional[threading.Thread] = None  # the checkpoint being written, if any
        self._writer_error: Optional[BaseException] = None

    # -- creation ------------------------------------------------------------------------
    @classmethod
    def create(cls, runs_root: str | Path, name: str, run_dir: Optional[str | Path] = None) -> "RunDir":
        path = Path(run_dir) if run_dir is not None else default_run_path(runs_root, name)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            if not holds_no_results(path):
                raise InputError(f"{path}: run directory exists and is not empty (use --resume to continue it)")
            _clear(path)  # a run interrupted before its first result: reused, not overwritten
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        path = Path(path)
        if not (path / "run.json").is_file():
            raise InputError(f"{path}: not a clrctl run directory (no run.json)")
        return cls(path)

    # -- files ---------------------------------------------------------------------------
    @property
    def plots_dir(self) -> Path:
        (self.path / "plots").mkdir(exist_ok=True)
        return self.path / "plots"

    @property
    def checkpoints_dir(self) -> Path:
        (self.path / "checkpoints").mkdir(exist_ok=True)
        return self.path / "checkpoints"

    def write_config(self, config: dict[str, Any], filename: str = "config.yaml") -> Path:
        path = self.path / filename
        write_text_atomic(path, yaml.safe_dump(config, sort_keys=False))
        return path

    def csv(self, name: str, columns: list[str]) -> CsvLog:
        return CsvLog(self.path / name, columns)

    def save_checkpoint(self, payload: dict[str, Any], name: str, copy: bool = True) -> None:
        """``checkpoints/<name>``, written atomically by a background thread while training
        goes on: the loop pays for a copy of the tensors (``copy``: the payload may still
        change; False when it is a snapshot already), not for serialising them. Writes happen
        one after the other, in order; :meth:`wait` (called before the summary and status)
        has them all on disk."""
        from clrctl.checkpoint import serialise, snapshot

        payload = snapshot(payload) if copy else payload
        previous, path = self._writer, self.checkpoints_dir / name

        def write() -> None:
            try:
                if previous is not None:
                    previous.join()
                data = serialise(payload)
                with atomic_file(path, "wb", fsync=False) as handle:  # the rename: never a torn file
                    handle.write(data)
            except BaseException as err:  # noqa: BLE001 - re-raised in the main thread by wait()
                self._writer_error = err

        self._writer = threading.Thread(target=write, name="clrctl-checkpoint", daemon=True)
        self._writer.start()

    def wait(self) -> None:
        """Until the checkpoint being written is on disk; re-raises its error, if any."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._writer_error is not None:
            err, self._writer_error = self._writer_error, None
            raise err

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.wait()
        write_json_atomic(self.path / "summary.json", summary)

    def read_run(self) -> dict[str, Any]:
        return read_json(self.path / "run.json")

    def start(self, kind: str, seed: int, device: str, argv: Optional[list[str]] = None) -> dict[str, Any]:
        info = run_info(kind, seed, device, argv)
        write_json_atomic(self.path / "run.json", info)
        return info

    def begin(self, info: dict[str, Any], config: dict[str, Any]) -> None:
        """A new run's first files: run.json (from :func:`run_info`, status ``running``), then
        config.yaml. Call it inside ``interrupts.deferred()`` right after :meth:`create`, so
        that the directory is never left holding a config without a run.json."""
        write_json_atomic(self.path / "run.json", {**info, "start_time": utc_now()})
        self.write_config(config)

    def set_status(self, status: str, **extra: Any) -> None:
        self.wait()
        info = self.read_run()
        info["status"] = status
        info["end_time"] = utc_now() if status in TERMINAL_STATUSES else None
        info.update(extra)
        write_json_atomic(self.path / "run.json", info)


def run_info(kind: str, seed: int, device: str, argv: Optional[list[str]] = None) -> dict[str, Any]:
    """run.json of a new run (status ``running``). It runs ``git``, so
    build it before the short critical section that creates the directory."""
    return {
        "kind": kind,
        "status": "running",
        "start_time": utc_now(),
        "end_time": None,
        "argv": list(argv if argv is not None else sys.argv),
        "seed": seed,
        "device": device,
        "versions": versions(),
        "host": socket.gethostname(),
        "git": git_state(),
    }


def holds_no_results(path: Path) -> bool:
    """Whether ``path`` is a run (or group) directory that clrctl created — it has a run.json or
    group.json — but that holds no result yet: nothing but run.json, config.yaml, group.json,
    CSVs with only their header, temporary files of atomic writes and empty folders.

    Such a directory is what an interrupt during start-up leaves; a rerun may reuse it."""
    path = Path(path)
    if not ((path / "run.json").is_file() or (path / "group.json").is_file()):
        return False
    return all(_not_a_result(p) for p in path.rglob("*"))


def _not_a_result(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        return True
    if not path.is_file() or path.is_symlink():
        return False
    if path.name in BOOKKEEPING or (path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)):
        return True
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", errors="replace") as handle:
            return sum(1 for _, line in zip(range(2), handle) if line.strip()) <= 1
    return False


def _clear(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def versions() -> dict[str, Optional[str]]:
    found: dict[str, Optional[str]] = {"clrctl": __version__, "python": platform.python_version()}
    try:
        import torch

        found["torch"] = torch.__version__
        found["cuda"] = torch.version.cuda
    except ImportError:  # pragma: no cover - torch is a dependency
        found["torch"] = found["cuda"] = None
    found["torchvision"] = _installed_version("torchvision")
    return found


def _installed_version(distribution: str) -> Optional[str]:
    """The installed distribution's version from its metadata, None when absent or unreadable.

    Not ``import torchvision``: a run that uses no torchvision model or data set should not pay
    for that import at its start."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except Exception:  # optional at run time; a broken install must not stop a run
        return None


def git_state() -> dict[str, Any]:
    """The commit of the working directory's repository and whether its tree was dirty."""

    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = None if commit is None else bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"commit": commit, "dirty": dirty}


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a run CSV as dicts of strings (blank = no value)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def create_group(runs_root: str | Path, name: str, seeds: list[int], path: Optional[str | Path] = None,
                 config: Optional[dict[str, Any]] = None) -> Path:
    """A seed group: ``<group>/group.json`` plus one run directory ``seed-K/`` per seed, and the
    group's ``config.yaml`` (each seed's config but for ``seed``), from which ``--resume``
    starts the seeds that never started."""
    group = RunDir.create(runs_root, name, path)
    write_json_atomic(group.path / "group.json", {
        "kind": "group", "name": name, "seeds": seeds, "runs": [f"seed-{s}" for s in seeds],
        "created": utc_now(),
    })
    if config is not None:
        group.write_config(config)
    return group.path
