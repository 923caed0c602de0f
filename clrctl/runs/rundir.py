"""The run directory: the only module that writes under ``runs/`` (SPEC.md, "Run directory").

A run directory holds ``config.yaml``, ``run.json`` (provenance and status), ``metrics.csv``,
``epochs.csv`` (train), ``summary.json`` and ``plots/``. JSON files are written atomically
(temporary file, then ``os.replace``) so a reader never sees half a file; CSVs are appended
and flushed so a killed run keeps what it logged. ``status`` stays ``running`` until the run
ends, which is how ``compare`` tells a finished run from a half-written one.

One process writes a run directory at a time: it holds an exclusive ``flock`` on ``.lock``
inside it (see :func:`claim`) for as long as it writes, and the kernel releases it when the
process ends, however it ends. So ``running`` with the lock free means a writer that died
(``kill -9``): :func:`is_live` tells the two apart.
"""

from __future__ import annotations

import csv
import datetime as _dt
import errno
import io
import json
import os
import platform
import socket
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from clrctl import __version__
from clrctl.errors import InputError
from clrctl.files.atomic import (TEMP_SUFFIX, WriteFailed, atomic_file, dumps_strict, failure_line,  # noqa: F401
                                 finite_or_none, os_reason, read_csv, read_json, remove_quietly, write_json_atomic, write_text_atomic, writing)

TERMINAL_STATUSES = ("completed", "diverged", "interrupted", "failed", "pruned")  # (pruned: a search stopped it)
LOCK_NAME = ".lock"  # held (flock) by the process that writes the directory; never removed
# What a run directory holds before its first result (see holds_no_results)
BOOKKEEPING = ("run.json", "config.yaml", "group.json", LOCK_NAME)
_CLAIM_RETRY_S = 0.25  # a claim retries this long: is_live() holds the lock for an instant


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


class CsvLog:
    """An append-only CSV with a fixed header; rows are dicts, missing values stay blank."""

    def __init__(self, path: Path, columns: list[str]):
        self.path = path
        self.columns = columns
        with writing(path):
            new = not path.exists() or path.stat().st_size == 0
            self._handle = open(path, "a", newline="", encoding="utf-8")
            self._rows = csv.writer(self._handle, lineterminator="\n")
            if new:
                self._rows.writerow(columns)
                self._handle.flush()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        # A plain writer over the columns (DictWriter's per-row checks cost the trainer ~2%);
        # csv writes None as "" and a float as repr(): its shortest exact round-trip.
        columns = self.columns
        with writing(self.path):
            self._rows.writerows([row.get(c) for c in columns] for row in rows)

    def write_lists(self, rows: Iterable[list[Any]]) -> None:
        """Rows already in column order (the trainer's per-step rows): no per-row reordering."""
        with writing(self.path):
            self._rows.writerows(rows)

    def flush(self) -> None:
        """To the OS: a killed process keeps every flushed row (the trainer's hot path)."""
        with writing(self.path):
            self._handle.flush()

    def sync(self) -> None:
        """To the disk (fsync): when closed (checkpoints, too, survive a killed process, not a
        power cut: see clrctl.files.checkpoint.save_atomic)."""
        with writing(self.path):
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Sync and close; the file is closed even when the sync fails (a full disk), and
        that failure is raised."""
        if self._handle.closed:
            return
        try:
            self.sync()
        finally:
            try:
                self._handle.close()
            except OSError:  # the same buffered rows failing again: already raised by sync()
                pass


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
    def create(cls, runs_root: str | Path, name: str, run_dir: Optional[str | Path] = None,
               resumable: bool = True) -> "RunDir":
        """A new (or empty, or result-free) directory, claimed for this process (see
        :func:`claim`; release it with :meth:`release`). The checks are made again once the
        directory is ours: of two processes creating one directory, the second is refused.
        ``resumable``: the command has ``--resume`` (train), which the refusal may suggest."""
        path = Path(run_dir) if run_dir is not None else default_run_path(runs_root, name)
        if path.exists() or path.is_symlink():
            _check_reusable(path, resumable)  # before anything is written: a foreign directory gets no .lock
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"{path}: cannot create the run directory ({os_reason(err)})") from None
        claim(path)
        try:
            _check_reusable(path, resumable)
            if any(p.name != LOCK_NAME for p in path.iterdir()):
                _clear(path)  # a run interrupted before its first result: reused, not overwritten
        except BaseException:
            release(path)
            raise
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        path = Path(path)
        if not (path / "run.json").is_file():
            raise InputError(f"{path}: not a clrctl run directory (no run.json)")
        return cls(path)

    def release(self) -> None:
        """Give up this process's claim on the directory (see :func:`claim`)."""
        release(self.path)

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
        from clrctl.files.checkpoint import serialise, snapshot

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
        that the directory is never left holding a config without a run.json. A file that
        cannot be written (disk full, read-only) refuses the run: InputError, nothing left."""
        try:
            write_json_atomic(self.path / "run.json", {**info, "start_time": utc_now()})
            self.write_config(config)
        except WriteFailed as err:
            for name in ("run.json", "config.yaml"):
                remove_quietly(self.path / name)
            raise InputError(f"{err}; nothing was started") from None

    def set_status(self, status: str, **extra: Any) -> None:
        """Record ``status`` in run.json, even when the last checkpoint failed (its error is
        raised after) or the disk is full (see :func:`_write_status`)."""
        try:
            self.wait()
        finally:
            info = self.read_run()
            info["status"] = status
            info["end_time"] = utc_now() if status in TERMINAL_STATUSES else None
            info.update(extra)
            _write_status(self.path / "run.json", info)

    def status(self) -> Optional[str]:
        """run.json's status; None when it cannot be read."""
        try:
            return self.read_run().get("status")
        except (InputError, AttributeError):
            return None


def _write_status(path: Path, info: dict[str, Any]) -> None:
    """run.json, atomically; on a full disk (no room for the temporary file) rewritten in
    place instead: a run.json of a few hundred bytes fits in the block it already has, and a
    status that says how the run ended is worth more than the atomic rename."""
    try:
        write_json_atomic(path, info)
    except WriteFailed as err:
        cause = err.__cause__
        if not isinstance(cause, OSError) or cause.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        text = (json.dumps(info, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8")
        with writing(path):
            with open(path, "r+b") as handle:
                handle.write(text)
                handle.truncate()
                handle.flush()
                os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------
# One writer per directory: an exclusive flock on DIR/.lock, held by the writing process

_held: dict[str, list] = {}  # resolved path -> [lock file descriptor, claims by this process]


# ---------------------------------------------------------------------------------------
# A process that does not write (DDP: every rank but 0)

class _NullLog:
    def write(self, rows) -> None: ...

    def write_lists(self, rows) -> None: ...

    def flush(self) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


class NullRunDir:
    """What a non-main rank holds for the run directory: the real path (for messages), no writes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoints_dir = self.path / "checkpoints"

    def csv(self, name: str, columns: list[str]) -> _NullLog:
        return _NullLog()

    def save_checkpoint(self, payload: dict[str, Any], name: str, copy: bool = True) -> None: ...

    def write_summary(self, summary: dict[str, Any]) -> None: ...

    def set_status(self, status: str, **fields: Any) -> None: ...

    def write_config(self, *args: Any, **kwargs: Any) -> None: ...


def claim(path: str | Path) -> None:
    """Claim ``path`` (an existing directory) for this process, or refuse with one line naming
    the holder. The claim lasts until :func:`release` (as often as claimed) or the process
    ends, however it ends: the kernel drops the lock of a killed process."""
    key = os.path.realpath(path)
    if key in _held:  # (this process again: a seed of its own group, a nested call)
        _held[key][1] += 1
        return
    lock = Path(path) / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise InputError(f"{path}: cannot claim the run directory ({os_reason(err)})") from None
    if not _lock(fd):
        holder = _holder(fd)
        os.close(fd)
        raise InputError(f"{path}: in use by {holder} (one process writes a run directory at a time)")
    try:  # who holds it, for the message of the next claimant (best effort: it may not fit)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode(), 0)
    except OSError:
        pass
    _held[key] = [fd, 1]


def _lock(fd: int) -> bool:
    import fcntl

    deadline = time.monotonic() + _CLAIM_RETRY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {int(info['pid'])} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def release(path: str | Path) -> None:
    """Undo one :func:`claim` of ``path`` by this process (a no-op when it holds none)."""
    key = os.path.realpath(path)
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        os.close(entry[0])  # (closing the descriptor drops the flock; the file stays)


def is_live(path: str | Path) -> bool:
    """Whether a process (this one included) holds ``path``'s lock, i.e. still writes it.
    A run whose run.json says ``running`` while this is False was left by a process that is
    gone (killed with SIGKILL, or its machine died)."""
    import fcntl

    if os.path.realpath(path) in _held:
        return True
    try:
        fd = os.open(Path(path) / LOCK_NAME, os.O_RDONLY)
    except OSError:  # no lock file: no clrctl process ever wrote it with this version
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def holder(path: str | Path) -> str:
    """``pid N on HOST`` of the process that last claimed ``path`` (for messages)."""
    try:
        fd = os.open(Path(path) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return "another process"
    try:
        return _holder(fd)
    finally:
        os.close(fd)


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
        "threads": thread_settings(),
    }


def thread_settings() -> dict[str, Any]:
    """CPU threads of this run: results depend on them (a sweep's worker gets cores / --jobs),
    so ``OMP_NUM_THREADS=K clrctl train …`` with K from here reproduces a run's bytes."""
    import torch  # run_info is built by train and range-test, which have torch loaded already

    return {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def holds_no_results(path: Path) -> bool:
    """Whether ``path`` is a run (or group) directory that clrctl created — it has a run.json or
    group.json — but that holds no result yet: nothing but run.json, config.yaml, group.json,
    CSVs with only their header, temporary files of atomic writes and empty folders.

    Such a directory is what an interrupt during start-up leaves; a rerun may reuse it."""
    path = Path(path)
    if not ((path / "run.json").is_file() or (path / "group.json").is_file()):
        return False
    return all(_not_a_result(p) for p in path.rglob("*"))


def _instead(path: Path, resumable: bool) -> str:
    """What to do about an existing, non-empty run directory: resume it only where that works."""
    if (path / "group.json").is_file() and resumable:
        return "use --resume to finish the seed group"
    try:
        info = json.loads((path / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    if info.get("status") == "completed":
        what = {"train": "training run", "range-test": "range test"}.get(info.get("kind"), "run")
        return f"it holds a completed {what}; choose another --run-dir"
    if resumable and info.get("kind") == "train":
        return "use --resume to continue it"
    return "choose another --run-dir, or remove it" + ("; a range test cannot be resumed" if not resumable else "")


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


def _check_reusable(path: Path, resumable: bool) -> None:
    """Refuse a path that is not a directory, or one that holds results or is not clrctl's."""
    if not path.is_dir():
        raise InputError(f"{path}: exists and is a file, not a directory; choose another --run-dir")
    if any(p.name != LOCK_NAME for p in path.iterdir()) and not holds_no_results(path):
        if is_live(path) and os.path.realpath(path) not in _held:
            raise InputError(f"{path}: in use by {holder(path)} (one process writes a run directory at a time)")
        raise InputError(f"{path}: run directory exists and is not empty ({_instead(path, resumable)})")


def _clear(path: Path) -> None:
    for child in path.iterdir():
        if child.name == LOCK_NAME:  # ours now; removing it would let a second process lock a new one
            continue
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


def create_group(runs_root: str | Path, name: str, seeds: list[int], path: Optional[str | Path] = None,
                 config: Optional[dict[str, Any]] = None, extra: Optional[dict[str, Any]] = None) -> Path:
    """A seed group: ``<group>/group.json`` plus one run directory ``seed-K/`` per seed, and the
    group's ``config.yaml`` (each seed's config but for ``seed``), from which ``--resume``
    starts the seeds that never started."""
    group = RunDir.create(runs_root, name, path)
    write_json_atomic(group.path / "group.json", {
        "kind": "group", "name": name, "seeds": seeds, "runs": [f"seed-{s}" for s in seeds],
        "created": utc_now(), **(extra or {}),
    })
    if config is not None:
        group.write_config(config)
    return group.path
