"""Running a sweep: ``--jobs`` warm worker processes, each running runs in turn.

Each run (a point and a seed) is claimed with a lock file (:mod:`.locks`), then trained by
``clrctl train <DIR/configs/point.yaml> seed=K --run-dir <run> -q`` — or ``train --resume
<run>`` when an earlier attempt left it interrupted, killed or failed — as a job of a
long-lived worker process (:mod:`.workers`: it imported torch and clrctl once, and resets what
a run owns between runs), with its output in ``DIR/logs/``. A run that crashes its worker
(``os._exit``, a segfault, out of memory), or runs past ``--timeout``, ends that worker only:
the run is recorded ``failed`` and the slot gets a new worker. Completed and diverged runs are
skipped. Workers divide the CPU cores among themselves (``OMP_NUM_THREADS``) and, on a machine
with GPUs, get one each, round-robin (``CUDA_VISIBLE_DEVICES``). On Linux a worker gets SIGTERM
when the sweep dies (even by ``kill -9``), so it stops cleanly and can be resumed.

SIGINT / SIGTERM to the sweep: no new run starts, each worker gets one SIGINT (it finishes its
step, checkpoints and marks its run ``interrupted``), the sweep waits for them and raises
:class:`Interrupted` (exit 130). A second signal forwards a second SIGINT (workers stop at once).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from clrctl import interrupts
from clrctl.errors import InputError
from clrctl.sweep import locks
from clrctl.sweep.plan import Plan, RunRef
from clrctl.sweep.store import DONE, SweepDir
from clrctl.sweep.workers import Done, Worker, WorkerPool, cli_job, describe_exit

_POLL_S = 0.1
ORPHAN_WAIT_S = 120.0
TIMEOUT_GRACE_S = 30.0  # a run past --timeout gets SIGINT (it checkpoints), then SIGKILL after this
_WAIT = object()  # _launch: come back to this run later


@dataclass
class Outcome:
    ref: RunRef
    status: str  # completed | diverged | failed | interrupted
    code: int
    message: str
    elapsed_s: float


class Events:
    """What the runner tells its caller (the CLI renders it). Silent by default."""

    def start(self, total: int, skipped: int) -> None: ...

    def launched(self, ref: RunRef, resumed: bool) -> None: ...

    def finished(self, outcome: Outcome) -> None: ...

    def held(self, ref: RunRef) -> None: ...

    def stopping(self) -> None: ...


@dataclass
class Result:
    outcomes: list[Outcome] = field(default_factory=list)
    skipped: list[RunRef] = field(default_factory=list)  # done before this invocation
    held: list[RunRef] = field(default_factory=list)  # claimed by another live process
    interrupted: bool = False


def parse_shard(text: Optional[str]) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4); None -> (1, 1)."""
    if text is None:
        return 1, 1
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i = n = 0
    if not sep or n < 1 or not 1 <= i <= n:
        raise InputError(f"--shard {text!r}: expected I/N with 1 <= I <= N (e.g. 1/4; Slurm: $SLURM_ARRAY_TASK_ID/N)")
    return i, n


def shard_runs(runs: list[RunRef], shard: tuple[int, int]) -> list[RunRef]:
    """The I-th of N shares: every N-th run of the plan's order, starting at the I-th."""
    index, count = shard
    return [ref for i, ref in enumerate(runs) if i % count == index - 1]


# ---------------------------------------------------------------------------------------
# Worker environment: threads and GPUs


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def visible_gpus(devices: list[str]) -> list[str]:
    """The GPU ids to hand out round-robin; none when no point may use CUDA (or there is none)."""
    if not any(d in ("auto", "cuda") for d in devices):
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    if not _gpu_device_nodes():
        return []  # no GPU here: spare the sweep process importing torch (a second or more)
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no usable CUDA: the workers run on the CPU
        return []


def _gpu_device_nodes() -> bool:
    """Whether this machine may have a GPU (Linux: an NVIDIA or ROCm device node; elsewhere: ask torch)."""
    if not sys.platform.startswith("linux"):
        return True
    try:
        names = os.listdir("/dev")
    except OSError:  # pragma: no cover
        return True
    return any(n.startswith("nvidia") or n in ("kfd", "dxg") for n in names)


def worker_env(slot: int, jobs: int, cores: int, gpus: list[str], device: str,
               base: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment of the worker in pool slot ``slot``: its share of the cores, its GPU."""
    env = dict(os.environ if base is None else base)
    threads = str(max(1, cores // max(1, jobs)))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)  # the user's own setting wins
    if gpus and device in ("auto", "cuda"):  # cuda:N names a device itself: leave it alone
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _die_with_parent(parent: int):
    """preexec_fn: on Linux, SIGTERM the worker when the sweep process dies (even kill -9)."""
    if not sys.platform.startswith("linux"):
        return None

    def preexec() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the sweep died before prctl: stop now
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


# ---------------------------------------------------------------------------------------
# The pool


@dataclass
class _Running:
    ref: RunRef
    lock: locks.Lock
    worker: Worker
    slot: int
    started: float
    timed_out: float = 0.0  # when --timeout sent its SIGINT


class Pool:
    def __init__(self, plan: Plan, sweep: SweepDir, jobs: int, shard: tuple[int, int],
                 events: Optional[Events] = None, timeout_s: Optional[float] = None):
        self.plan, self.sweep, self.jobs, self.shard = plan, sweep, jobs, shard
        self.events = events or Events()
        self.timeout_s = timeout_s
        self.result = Result()
        self.cores = cpu_count()
        self.gpus = visible_gpus([p.config.get("device", "auto") for p in plan.points])
        self.workers = WorkerPool(jobs, preexec_fn=lambda: _die_with_parent(os.getpid()),
                                  log=sweep.path / "logs" / "workers.out")
        self._signals = 0
        self._forwarded = 0
        self._waiting: dict[RunRef, float] = {}

    def run(self) -> Result:
        mine = shard_runs(self.plan.runs(), self.shard)
        queue = deque()
        for ref in mine:
            (self.result.skipped if self.sweep.run_status(ref) in DONE else queue).append(ref)
        self.jobs = max(1, min(self.jobs, len(queue) or 1))
        self.workers.slots = self.jobs
        self.events.start(len(mine), len(self.result.skipped))
        for slot, ref in zip(range(self.jobs), queue):  # they preload while the first runs are claimed
            self.workers.start(slot, self._env(slot, ref))
        active: dict[int, _Running] = {}
        beat = time.monotonic()
        try:
            with self._trap_signals():
                while queue or active:
                    if self._signals:
                        queue.clear()
                        self._forward(active)
                    free = [s for s in range(self.jobs) if s not in active]
                    for _ in range(len(queue)):
                        if not free or self._signals:
                            break
                        ref = queue.popleft()
                        running = self._launch(ref, free[0])
                        if running is _WAIT:
                            queue.append(ref)  # its orphaned worker is still checkpointing: try again soon
                        elif running is not None:
                            active[free.pop(0)] = running
                    for slot, done in self.workers.poll(_POLL_S if active else 0.0).items():
                        if slot in active:
                            self._finish(active.pop(slot), done)
                    self._check_timeouts(active)
                    if time.monotonic() - beat > locks.HEARTBEAT_S:
                        beat = time.monotonic()
                        for running in active.values():
                            locks.heartbeat(running.lock)
                    if not active and queue:
                        time.sleep(_POLL_S)  # every queued run is held or waited for
        finally:
            self.workers.close()
        self.result.interrupted = self._signals > 0
        return self.result

    def _env(self, slot: int, ref: RunRef) -> dict[str, str]:
        device = self.plan.point(ref.point).config.get("device", "auto")
        return worker_env(slot, self.jobs, self.cores, self.gpus, device)

    # -- one run --------------------------------------------------------------------
    def _launch(self, ref: RunRef, slot: int) -> Optional[_Running]:
        lock = locks.claim(self.sweep.lock_path(ref), shard=f"{self.shard[0]}/{self.shard[1]}")
        if lock is None:
            if self._orphaned(ref):
                return _WAIT
            self.result.held.append(ref)
            self.events.held(ref)
            return None
        status = self.sweep.run_status(ref)  # again, now that it is ours: another shard may have finished it
        if status in DONE:
            locks.release(lock)
            self.result.skipped.append(ref)
            return None
        run = self.sweep.run_path(ref)
        resumed = (run / "run.json").is_file()
        if resumed:
            args = ["train", "--resume", str(run.resolve()), "-q"]
        else:
            self.sweep.clear_unstarted(ref)
            config = self.sweep.config_path(self.plan.point(ref.point)).resolve()
            args = ["train", str(config), f"seed={ref.seed}", "--run-dir", str(run.resolve()), "-q"]
        worker = self.workers.worker(slot, self._env(slot, ref))
        log_path = self.sweep.log_path(ref)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} clrctl {' '.join(args)}"
                      f"  [worker pid {worker.pid}, its run {worker.jobs + 1}]\n")
        worker.submit(cli_job(args, log_path))
        locks.set_worker(lock, worker.pid)
        self.events.launched(ref, resumed)
        return _Running(ref, lock, worker, slot, time.monotonic())

    def _orphaned(self, ref: RunRef) -> bool:
        """Held by a worker of a sweep on this host that died (kill -9): its worker got SIGTERM
        and is writing its checkpoint; wait for it (at most ORPHAN_WAIT_S) instead of skipping."""
        holder, mtime = locks.read(self.sweep.lock_path(ref))
        first = self._waiting.setdefault(ref, time.monotonic())
        return (mtime is not None and holder.get("host") == socket.gethostname()
                and isinstance(holder.get("pid"), int) and not locks.pid_alive(holder["pid"])
                and time.monotonic() - first < ORPHAN_WAIT_S)

    def _check_timeouts(self, active: dict[int, _Running]) -> None:
        """A run past --timeout: SIGINT (it checkpoints and stops), SIGKILL of its worker after the grace."""
        if self.timeout_s is None:
            return
        now = time.monotonic()
        for running in active.values():
            since = running.worker.running_since  # the run's own time, not its worker's start-up
            if not running.timed_out and since is not None and now - since > self.timeout_s:
                running.timed_out = now
                running.worker.signal(signal.SIGINT)
            elif running.timed_out and now - running.timed_out > TIMEOUT_GRACE_S:
                running.worker.signal(signal.SIGKILL)

    def _finish(self, running: _Running, done: Done) -> None:
        code = done.code
        ref = running.ref
        status = self.sweep.run_status(ref)
        log = self.sweep.log_path(ref)
        message = _last_error(log) if code else ""
        if running.timed_out:
            status = "failed"
            message = f"timed out after {self.timeout_s:g} s" + (
                "" if code == 130 else f"; killed {TIMEOUT_GRACE_S:g} s later" if code == -signal.SIGKILL
                else f" ({describe_exit(code)})")
        elif done.died:  # os._exit, a segfault, killed: the run's files say "running" at best
            status = "failed"
            message = f"{done.error}" + (f"; {message}" if message.startswith("error:") else "")
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(f"clrctl sweep: {done.error}\n")
        elif code == 0 and status != "completed":
            status = "failed"
        elif code == 130 or (code != 0 and status in ("running", "pending", "completed")):
            status = "interrupted" if code == 130 else "failed"
        self.sweep.record_exit(ref, status, code, message, worker={"pid": done.pid, "run": done.jobs})
        locks.release(running.lock)
        outcome = Outcome(ref, status, code, message, time.monotonic() - running.started)
        self.result.outcomes.append(outcome)
        self.events.finished(outcome)

    # -- signals --------------------------------------------------------------------
    def _forward(self, active: dict[int, _Running]) -> None:
        while self._forwarded < self._signals:
            self._forwarded += 1
            if self._forwarded == 1:
                self.events.stopping()
            for running in active.values():
                running.worker.signal(signal.SIGINT)

    def _trap_signals(self):
        def handler(_signum, _frame):
            self._signals += 1

        return interrupts.handled_by(handler)


def _last_error(log) -> str:
    """The worker's one-line error (``error: …``), else its last line."""
    try:
        lines = [line.strip() for line in open(log, encoding="utf-8", errors="replace") if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return (errors[-1] if errors else lines[-1] if lines else "")[:300]
