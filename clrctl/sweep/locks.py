"""Claiming one run of a sweep: an exclusive-create lock file, safe on a shared file system.

A claim is ``os.open(lock, O_CREAT | O_EXCL)``, which exactly one process wins, whichever
machine it runs on. The lock records the claimant's host, its pid, the worker's pid and a
nonce, and its holder refreshes the file's mtime (a heartbeat) while the run goes on.

**Stale locks** (the holder was killed with ``kill -9``, or its machine died) are taken over when

- the lock's host is this host and neither its sweep pid nor its worker pid is alive — a live
  pid holds the lock whatever its age (a sweep stopped with Ctrl-Z beats no heartbeat, while
  its worker, in a session of its own, trains on), or
- the lock's host is another host and its mtime is older than :data:`LEASE_S` (no heartbeat for
  that long: the holder is gone), or it is empty and older than a minute (killed while being
  written).

Even a wrong takeover cannot make two processes train one run: each holds its run
directory's own lock (:func:`clrctl.runs.rundir.claim`), and the second is refused.

A takeover is itself exclusive: the taker first creates ``<lock>.stale-<nonce>`` (O_EXCL) for
the nonce it judged stale, so of two processes that judge the same lock stale only one removes
it; the other sees the marker and moves on.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

LEASE_S = 600.0  # a lock of another host whose mtime is this old is stale
HEARTBEAT_S = 60.0  # how often a holder refreshes its locks' mtime
_EMPTY_GRACE_S = 60.0


@dataclass
class Lock:
    path: Path
    info: dict[str, Any]


def claim(path: Path, **info: Any) -> Optional[Lock]:
    """Create ``path`` exclusively (taking over a stale lock); None when someone else holds it."""
    lock = _create(path, info)
    if lock is not None:
        return lock
    holder, mtime = read(path)
    if mtime is None:  # released between our attempt and our look: try once more
        return _create(path, info)
    if not is_stale(holder, mtime, time.time(), socket.gethostname()):
        return None
    marker = path.with_name(f"{path.name}.stale-{holder.get('nonce') or int(mtime * 1e6)}")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return None  # another process is taking this one over
    path.unlink(missing_ok=True)
    return _create(path, info)


def _create(path: Path, info: dict[str, Any]) -> Optional[Lock]:
    payload = {"host": socket.gethostname(), "pid": os.getpid(), "worker": None, "nonce": uuid.uuid4().hex,
               "time": time.time(), **info}
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(payload))
        handle.flush()
        os.fsync(handle.fileno())
    return Lock(path, payload)


def read(path: Path) -> tuple[dict[str, Any], Optional[float]]:
    """(holder info, mtime); ({}, None) when there is no lock."""
    try:
        mtime = path.stat().st_mtime
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, None
    try:
        holder = json.loads(text) if text.strip() else {}
    except ValueError:
        holder = {}
    return (holder if isinstance(holder, dict) else {}), mtime


def is_stale(holder: dict[str, Any], mtime: float, now: float, host: str) -> bool:
    """The takeover rule of the module docstring."""
    if not holder:
        return now - mtime > _EMPTY_GRACE_S
    if holder.get("host") != host:  # the lease: for holders this host cannot ask
        return now - mtime > LEASE_S
    pids = [p for p in (holder.get("pid"), holder.get("worker")) if isinstance(p, int)]
    return not any(pid_alive(p) for p in pids)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if sys.platform.startswith("linux"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            return stat.rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    return True


def set_worker(lock: Lock, pid: int) -> None:
    """Record the worker's pid, so a rerun on this host knows whether the run is still going."""
    lock.info["worker"] = pid
    tmp = lock.path.with_name(f".{lock.path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(lock.info), encoding="utf-8")
    os.replace(tmp, lock.path)


def heartbeat(lock: Lock) -> None:
    try:
        os.utime(lock.path)
    except FileNotFoundError:
        pass


def release(lock: Lock) -> None:
    """Remove the lock (only if it is still ours) and any takeover markers left next to it."""
    holder, _ = read(lock.path)
    if holder.get("nonce") == lock.info["nonce"]:
        lock.path.unlink(missing_ok=True)
    for marker in lock.path.parent.glob(f"{lock.path.name}.stale-*"):
        marker.unlink(missing_ok=True)
