"""``clrctl … --nproc N``: the launcher of DDP workers on this machine, and what the workers
tell it — each rank's own error, and rank 0's run directory — so that it can say truly why a
run failed and mark a run that a failure left ``running`` as ``failed``.

The launcher is torch's elastic agent (``torch.distributed.run``, the code behind
``torchrun --standalone``). The worker side of the process group lives in
:mod:`clrctl.engine.ddp`; a worker stops when its launcher dies (:func:`~clrctl.engine.ddp.stop_with_launcher`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from clrctl.engine import ddp
from clrctl.errors import ClrctlError

# Exit codes the launcher passes on from rank 0 (SPEC: 2 bad input, 1 ended badly, 130 interrupted).
_PASSED_ON = (1, 2, 130)


def tell_path(run) -> None:
    """Rank 0: tell the other ranks its run directory (``run``), or None where it failed to
    make one (the error it raises says why). A no-op in one process."""
    if ddp.initialised():
        if run is not None:
            announce(run.path)
        ddp.broadcast(None if run is None else str(run.path))


def announce(path: Path) -> None:
    """Rank 0: tell the launcher the run directory, which it marks ``failed`` if a rank dies
    (rank 0 itself may be the one, by SIGKILL)."""
    folder = ddp.supervised()
    if folder is not None and ddp.is_main():
        from clrctl.runs.rundir import write_text_atomic

        write_text_atomic(folder / "run-dir", str(Path(path).resolve()))


def report(err: BaseException, message: str, code: int) -> Optional[str]:
    """The line to print for a worker's error (``message``, the CLI's one line for ``err``), or
    None. Under ``clrctl … --nproc`` every worker leaves its line to the launcher, which
    prints the first failing rank's own (the others then only lost a peer). Under torchrun,
    rank 0 prints clrctl's errors (every rank meets the same) and each rank its unexpected ones."""
    if not ddp.world().distributed:
        return message
    if ddp.timed_out(err):
        message = (f"a collective operation timed out after {ddp.timeout_s():g} s ({ddp.TIMEOUT_ENV}): "
                   "another process is stuck or slower than that")
    folder = ddp.supervised()
    if folder is None:
        return message if ddp.is_main() or not isinstance(err, ClrctlError) else None
    from clrctl.runs.rundir import write_json_atomic

    lost = isinstance(err, ddp.EchoedError) or (isinstance(err, RuntimeError) and any(s in str(err) for s in ddp.PEER_LOST))
    write_json_atomic(folder / f"error-{ddp.world().rank}.json", {
        "rank": ddp.world().rank, "time": time.time(), "code": code, "message": message, "echo": lost})
    return None


def launch(nproc: int, args: list[str], say: Callable[[str], None]) -> int:
    """Run ``python -m clrctl ARGS`` as ``nproc`` workers on this machine through torch's
    elastic launcher (``torchrun --standalone``); returns the exit code to pass on, after
    ``say`` got the one line that tells why the workers failed (if they did).

    A SIGINT/SIGTERM to this process is forwarded by the launcher to every worker, which stop
    together at their next host sync; a worker that fails makes the launcher stop the rest.
    The error shown is the first failing rank's own; a run left ``running`` or ``interrupted``
    by a failure (rank 0 killed, an error on one rank) is marked ``failed``."""
    from torch.distributed.run import get_args_parser

    ddp.timeout_s()  # a bad CLRCTL_DDP_TIMEOUT: exit 2 before any process starts
    logging.disable(logging.ERROR)  # the agent's own log lines: the workers and this function report
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    launcher = get_args_parser().parse_args([
        "--standalone", "--nproc-per-node", str(nproc), "--max-restarts", "0", "--monitor-interval", "0.1",
        "--rdzv-id", uuid.uuid4().hex, "--no-python", sys.executable, "-m", "clrctl", *args,
    ])
    folder = Path(tempfile.mkdtemp(prefix="clrctl-ddp-"))
    saved = {key: os.environ.get(key) for key in (ddp.LAUNCHER_PID, ddp.LAUNCH_DIR)}
    os.environ.update({ddp.LAUNCHER_PID: str(os.getpid()), ddp.LAUNCH_DIR: str(folder)})  # (the workers inherit it)
    try:
        return _supervise(launcher, folder, say)
    finally:
        for key, value in saved.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)


def _supervise(launcher, folder: Path, say: Callable[[str], None]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import run

    try:
        run(launcher)
    except SignalException:  # the workers were interrupted: rank 0 said where to resume
        records = _records(folder)
        line = next((_line(r) for r in records if r["rank"] == 0), None)
        if line:
            say(line)
        return 130
    except ChildFailedError as err:
        codes = {f.local_rank if f.local_rank is not None else 0: f.exitcode for f in err.failures.values()}
        code, line = _verdict(_records(folder), codes)
        code = _mark_failed(folder, code, line)
        if line:
            say(line)
        return code
    return 0


def _records(folder: Path) -> list[dict[str, Any]]:
    """The errors the workers left (:func:`report`), oldest first."""
    from clrctl.runs.rundir import read_json

    records = []
    for path in folder.glob("error-*.json"):
        try:
            records.append(read_json(path))
        except ClrctlError:  # (written atomically: only a rank killed mid-write leaves none)
            pass
    return sorted(records, key=lambda r: r["time"])


def _verdict(records: list[dict[str, Any]], codes: dict[int, int]) -> tuple[int, Optional[str]]:
    """(exit code, line) of a failed launch: the first rank that failed on its own says why;
    then a rank killed by a signal (SIGTERM is the launcher stopping the others); then a rank
    that only lost its peers; interruptions last."""
    failed = [r for r in records if r["code"] != 130]
    own = [r for r in failed if not r["echo"]]
    killed = any(code not in (0, *_PASSED_ON) and code != -signal.SIGTERM for code in codes.values())
    if own or (records and not killed):
        chosen = _first(own or failed or records)
        return chosen["code"], _line(chosen)
    first = next((code for _, code in sorted(codes.items()) if code != 130), 130)
    if not killed and first in _PASSED_ON:  # no word from the workers (--debug: they printed tracebacks)
        return first, None
    return 1, "worker failed: " + ", ".join(f"rank {r} ({_describe(c)})" for r, c in sorted(codes.items()))


def _first(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The oldest record; rank 0's when it says the same (an error every rank meets)."""
    oldest = records[0]
    return next((r for r in records if r["rank"] == 0 and r["message"] == oldest["message"]), oldest)


def _line(record: dict[str, Any]) -> str:
    return record["message"] if record["rank"] == 0 else f"rank {record['rank']}: {record['message']}"


def _mark_failed(folder: Path, code: int, line: Optional[str]) -> int:
    """A run that a failure left ``running`` (rank 0 killed) or ``interrupted`` (rank 0 stopped
    by the launcher after another rank failed) is marked ``failed``: its directory exists, so
    the exit code is 1 (the run ended badly), also for an error that is bad input elsewhere."""
    if code == 130 or not (folder / "run-dir").is_file():
        return code
    from clrctl.runs.rundir import RunDir, read_json, write_json_atomic

    run = RunDir(Path((folder / "run-dir").read_text()))
    try:
        info = run.read_run()
        status = info.get("status")
        # (rank 0 may have marked it failed itself, having only lost a peer: the error is the other's)
        if status in ("running", "interrupted") or (status == "failed" and not info.get("error")):
            run.set_status("failed", error=line)
            summary = run.path / "summary.json"
            if summary.is_file():
                write_json_atomic(summary, {**read_json(summary), "status": "failed"})
            status = "failed"
    except (ClrctlError, OSError):  # unreadable or unwritable: the line below still says why
        return code
    return 1 if status == "failed" else code


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit {code}"
