"""Warm workers: long-lived processes that run jobs in turn, so a sweep spends its time training.

A new ``clrctl train`` process per point pays the whole start-up — importing torch, typer, rich,
pydantic, matplotlib, torch._dynamo with the first optimizer — before its first step: seconds
on a busy machine for a point that trains for a fraction of one. A :class:`Worker` pays it once
(``python -m clrctl.sweep.workers``, which imports the ``preload`` modules and builds an
optimizer before it says it is ready) and then runs one :class:`Job` after another:

- a job is ``TARGET(*args, **kwargs)`` for a ``module:callable`` TARGET. The sweep's jobs are
  ``clrctl.cli:main(["train", …])`` — the program ``clrctl train`` itself, in this process
  (its exit code is the job's code: ``SystemExit`` is caught); a search's trial can be any
  function of the library (its JSON-able return value comes back as :attr:`Done.value`);
- the job's stdout and stderr (file descriptors 1 and 2, so C-level output and
  :mod:`faulthandler`'s report of a crash too) are appended to the job's log file;
- between jobs the worker resets what a job owns: ``sys.argv``, ``sys.path``, the
  environment, the working directory, the warning filters (and their once-per-location
  registries), the RNG states of ``random``, numpy and torch (as the worker started: a job
  sees what a fresh process would), torch's thread count (the worker's share of the cores),
  SIGINT/SIGTERM handlers, and every module the job imported from outside the Python
  installation and clrctl — the user's ``module:callable`` files are imported afresh by the
  next job, as a new process would (edited files included);
- isolation: a job that crashes the process (``os._exit``, a segfault), is killed or runs out
  of memory ends its worker only: :meth:`Worker.poll` reports the job :attr:`Done.died` with the
  exit code or signal, and the caller starts another worker. A worker whose memory grew past
  ``max_rss_mb`` after a job retires (exits after reporting it), and so does one whose job
  was interrupted (exit 130): the caller replaces it for the next job.

Signals: SIGINT/SIGTERM sent to a worker reach the job's own handlers (``clrctl train``:
finish the step, checkpoint, exit 130; a second one stops at once). Between jobs they are
recorded (:func:`clrctl.interrupts.record_early`), so a job that starts right after one
ends at once, as ``clrctl train`` does when interrupted while starting. A worker lives in a
session of its own and, on Linux, gets SIGTERM when its parent dies (even by ``kill -9``):
its job checkpoints, and the end of its command pipe makes it exit.

:class:`WorkerPool` keeps one worker per slot and replaces it when the environment a job
needs differs (another GPU, other thread settings), or when it died or retired. The grid
runner (:mod:`clrctl.sweep.runner`) uses it; so can a search or seed groups: a job per trial,
``slot`` = the trial's share of the machine, and :meth:`WorkerPool.poll` in the scheduling loop.

Protocol: one JSON object per line on the worker's stdin (a job; end of file: exit) and on
a pipe whose descriptor is the worker's first argument (``ready``, then one result per job).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

# What a clrctl training job needs (the worker imports them before it is ready).
TRAIN_PRELOAD = ("torch", "clrctl.cli", "clrctl.runs.training", "clrctl.engine.setup", "clrctl.runs.plots",
                 "clrctl.plots.train")
DEFAULT_MAX_RSS_MB = 4096.0  # a worker grown by more than this since it was ready retires after its job
_READY_TIMEOUT_S = 600.0


@dataclass
class Job:
    """``target(*args, **kwargs)`` with stdout/stderr appended to ``log``; ``argv`` is
    ``sys.argv`` during the job (``clrctl train`` records it in run.json)."""

    target: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    log: Optional[str] = None
    argv: Optional[list[str]] = None
    cwd: Optional[str] = None


@dataclass
class Done:
    """How a job ended: ``code`` is its exit code (0; ``SystemExit``'s; 1 for an exception;
    130 when interrupted) or, when the worker ``died``, the worker's (negative: the signal)."""

    code: int
    value: Any = None
    died: bool = False
    error: str = ""  # an exception's one line, or what killed the worker
    rss_mb: float = 0.0
    retired: bool = False  # the worker exits after this job (interrupted, or grown too big)
    pid: int = 0
    jobs: int = 0  # how many jobs this worker has run, this one included


def cli_job(args: list[str], log: Union[str, Path], cwd: Optional[str] = None) -> Job:
    """The program ``clrctl ARGS`` as a job (what ``python -m clrctl ARGS`` would run)."""
    return Job("clrctl.cli:main", [list(args)], log=str(log), argv=["clrctl", *args], cwd=cwd)


def describe_exit(code: int) -> str:
    """``SIGSEGV (segmentation fault)``, ``SIGKILL (killed; out of memory?)``, ``exit code 3``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
        what = {"SIGSEGV": "segmentation fault", "SIGKILL": "killed; out of memory?", "SIGABRT": "aborted",
                "SIGBUS": "bus error", "SIGFPE": "arithmetic error"}.get(name)
        return f"{name} ({what})" if what else name
    return f"exit code {code}"


# ---------------------------------------------------------------------------------------
# The parent's side


class Worker:
    """One worker process. :meth:`submit` a job, :meth:`poll` until it is done."""

    def __init__(self, env: Optional[dict[str, str]] = None, preload: tuple[str, ...] = TRAIN_PRELOAD,
                 log: Optional[Union[str, Path]] = None, max_rss_mb: Optional[float] = DEFAULT_MAX_RSS_MB,
                 preexec_fn: Optional[Callable[[], None]] = None, cwd: Optional[str] = None):
        self.env = dict(os.environ if env is None else env)
        self.log = None if log is None else str(log)  # the worker's own output (start-up errors), not its jobs'
        read, write = os.pipe()
        out = open(log, "a", encoding="utf-8") if log is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clrctl.sweep.workers", str(write), str(max_rss_mb or 0), *preload],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=cwd,
                pass_fds=(write,), start_new_session=True, preexec_fn=preexec_fn)
        finally:
            os.close(write)
            if log is not None:
                out.close()
        os.set_blocking(read, False)
        self._read, self._buffer = read, b""
        self.ready = False
        self.busy: Optional[Job] = None
        self.running_since: Optional[float] = None  # when the worker began the job (after its start-up)
        self.retired = False
        self.jobs = 0
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None and not self.retired

    def fileno(self) -> int:
        return self._read

    def submit(self, job: Job) -> None:
        """Send ``job`` (queued by the worker's pipe while it is still starting)."""
        if self.busy is not None:
            raise RuntimeError("this worker is running a job already")
        self.busy = job
        self.running_since = None
        self.jobs += 1
        line = json.dumps({"target": job.target, "args": job.args, "kwargs": job.kwargs, "log": job.log,
                           "argv": job.argv, "cwd": job.cwd}) + "\n"
        try:
            self.proc.stdin.write(line.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: poll() says so

    def poll(self) -> Optional[Done]:
        """The running job's :class:`Done` once it ended (or the worker died), else None."""
        for message in self._messages():
            if message.get("ready"):
                self.ready = True
                continue
            if message.get("started"):
                self.running_since = time.monotonic()
                continue
            if self.busy is None:
                continue
            self.busy = None
            done = Done(int(message["code"]), message.get("value"), False, message.get("error", ""),
                        float(message.get("rss_mb", 0.0)), bool(message.get("retired")), self.pid, self.jobs)
            if done.retired:
                self.retired = True
                self._wait_exit()
            return done
        if self.proc.poll() is not None:
            for message in self._messages():  # what it said just before it exited
                if self.busy is not None and "code" in message:
                    self.busy = None
                    self.retired = True
                    return Done(int(message["code"]), message.get("value"), False, message.get("error", ""),
                                float(message.get("rss_mb", 0.0)), True, self.pid, self.jobs)
            if self.busy is not None:
                self.busy = None
                self.retired = True
                code = self.proc.returncode
                what = "the worker died" if self.ready else "the worker died while starting"
                where = f"; its output: {self.log}" if self.log and not self.ready else ""
                return Done(code, None, True, f"{what}: {describe_exit(code)}{where}", 0.0, True, self.pid,
                            self.jobs)
        return None

    def wait_ready(self, timeout: float = _READY_TIMEOUT_S) -> bool:
        """Block until the worker has preloaded (False if it died first)."""
        deadline = time.monotonic() + timeout
        while not self.ready and self.proc.poll() is None and time.monotonic() < deadline:
            select.select([self._read], [], [], 0.05)
            for message in self._messages():
                if message.get("ready"):
                    self.ready = True
        return self.ready

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait()

    def close(self, timeout: float = 10.0) -> None:
        """End of its command pipe: it exits (after its job, if one runs); killed after ``timeout``."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        try:
            os.close(self._read)
        except OSError:
            pass

    def _wait_exit(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def _messages(self) -> list[dict[str, Any]]:
        try:
            while True:
                chunk = os.read(self._read, 65536)
                if not chunk:
                    break
                self._buffer += chunk
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pass
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


class WorkerPool:
    """One :class:`Worker` per slot, replaced when it died, retired, or a job needs another
    environment. ``make_env(slot)`` is the default environment of a slot's worker."""

    def __init__(self, slots: int, preload: tuple[str, ...] = TRAIN_PRELOAD,
                 max_rss_mb: Optional[float] = DEFAULT_MAX_RSS_MB,
                 preexec_fn: Optional[Callable[[], Optional[Callable[[], None]]]] = None,
                 log: Optional[Union[str, Path]] = None):
        self.slots, self.log = slots, log
        self.preload, self.max_rss_mb = preload, max_rss_mb
        self._preexec = preexec_fn  # called per worker: returns its preexec_fn (or None)
        self.workers: dict[int, Worker] = {}
        self.started = 0  # workers started, replacements included

    def worker(self, slot: int, env: dict[str, str]) -> Worker:
        """The live worker of ``slot`` whose environment is ``env`` (started if need be)."""
        current = self.workers.get(slot)
        if current is not None and current.alive() and current.busy is None and current.env == env:
            return current
        if current is not None:
            current.close(timeout=30.0)
        self.workers[slot] = Worker(env, self.preload, log=self.log, max_rss_mb=self.max_rss_mb,
                                    preexec_fn=self._preexec() if self._preexec else None)
        self.started += 1
        return self.workers[slot]

    def start(self, slot: int, env: dict[str, str]) -> None:
        """Start ``slot``'s worker now (it preloads while the caller does other work)."""
        self.worker(slot, env)

    def submit(self, slot: int, env: dict[str, str], job: Job) -> Worker:
        worker = self.worker(slot, env)
        worker.submit(job)
        return worker

    def poll(self, timeout: float = 0.0) -> dict[int, Done]:
        """The slots whose job ended (waits up to ``timeout`` for one)."""
        busy = {slot: w for slot, w in self.workers.items() if w.busy is not None}
        if timeout > 0 and busy:
            select.select([w.fileno() for w in busy.values()], [], [], timeout)
        elif timeout > 0:
            time.sleep(timeout)
        done = {}
        for slot, worker in busy.items():
            result = worker.poll()
            if result is not None:
                done[slot] = result
        return done

    def replace(self, slot: int) -> None:
        """Kill ``slot``'s worker (a hung job): the next job there gets a new one."""
        worker = self.workers.pop(slot, None)
        if worker is not None:
            worker.kill()
            worker.close(timeout=1.0)

    def close(self, timeout: float = 10.0) -> None:
        for worker in self.workers.values():
            try:
                worker.proc.stdin.close()
            except OSError:
                pass
        for worker in self.workers.values():
            worker.close(timeout=timeout)
        self.workers.clear()


# ---------------------------------------------------------------------------------------
# The worker's side (python -m clrctl.sweep.workers RESULT_FD MAX_RSS_MB PRELOAD...)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def _installed_roots() -> tuple[str, ...]:
    """Where modules that are not the user's live: the Python installation and clrctl itself."""
    import sysconfig

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(__file__))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            roots.add(sysconfig.get_path(key))
        except KeyError:  # pragma: no cover
            pass
    return tuple(os.path.realpath(r) + os.sep for r in roots if r)


def _is_users(module: Any, roots: tuple[str, ...]) -> bool:
    paths = [getattr(module, "__file__", None), *list(getattr(module, "__path__", None) or [])]
    paths = [p for p in paths if isinstance(p, str)]
    if not paths:
        return False  # built-in, frozen, or made up at run time
    return not any(os.path.realpath(p).startswith(roots) for p in paths)


class _State:
    """What a job may change and the next must not see, as the worker had it when it was ready."""

    def __init__(self) -> None:
        import random
        import warnings

        self.argv, self.path, self.env, self.cwd = list(sys.argv), list(sys.path), dict(os.environ), os.getcwd()
        self.filters = list(warnings.filters)
        self.modules = set(sys.modules)
        self.roots = _installed_roots()
        self.random = random.getstate()
        # numpy's and torch's when preloaded (a worker for other jobs need not load them)
        self.numpy = sys.modules["numpy"].random.get_state() if "numpy" in sys.modules else None
        torch = sys.modules.get("torch")
        self.torch = (torch.get_rng_state(), torch.get_num_threads(), torch.get_default_dtype()) if torch else None
        self.handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}

    def restore(self) -> None:
        import importlib
        import linecache
        import random
        import warnings

        for sig, handler in self.handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)
        sys.argv[:] = self.argv
        sys.path[:] = self.path
        if dict(os.environ) != self.env:
            os.environ.clear()
            os.environ.update(self.env)
        os.chdir(self.cwd)
        warnings.filters[:] = self.filters
        warnings._filters_mutated()  # once-per-location registries start over
        for name in [n for n in sys.modules if n not in self.modules]:
            if _is_users(sys.modules[name], self.roots):
                del sys.modules[name]
        importlib.invalidate_caches()
        linecache.clearcache()
        random.setstate(self.random)
        if self.numpy is not None:
            sys.modules["numpy"].random.set_state(self.numpy)
        if self.torch is not None:
            torch = sys.modules["torch"]
            state, threads, dtype = self.torch
            torch.set_rng_state(state)
            torch.set_num_threads(threads)
            torch.set_default_dtype(dtype)


def _preload(names: list[str]) -> None:
    import importlib

    for name in names:
        importlib.import_module(name)
    if "torch" in names:  # the first optimizer imports torch._dynamo (~0.7 s): pay it now
        import torch

        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def _resolve(target: str) -> Callable[..., Any]:
    import importlib

    module, _, attr = target.partition(":")
    value: Any = importlib.import_module(module)
    for part in attr.split("."):
        value = getattr(value, part)
    return value


def _run(job: dict[str, Any]) -> dict[str, Any]:
    """One job, its output appended to its log; the job's code, value or error."""
    import traceback

    log = job.get("log")
    saved = []
    if log:
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        saved = [os.dup(1), os.dup(2)]
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    code, value, error = 0, None, ""
    try:
        if job.get("argv") is not None:
            sys.argv[:] = list(job["argv"])
        if job.get("cwd"):
            os.chdir(job["cwd"])
        value = _resolve(job["target"])(*job.get("args", []), **job.get("kwargs", {}))
        json.dumps(value)  # what cannot come back is an error of the job, not of the worker
    except SystemExit as exit_:
        value = None
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if not isinstance(exit_.code, (int, type(None))):
            print(exit_.code, file=sys.stderr)
    except KeyboardInterrupt:
        value, code, error = None, 130, "interrupted"
    except BaseException as err:  # noqa: BLE001 - the job's failure, reported, never the worker's
        traceback.print_exc()
        value, code = None, 1
        error = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - a closed stream in user code
            pass
        for target, fd in zip((1, 2), saved):
            os.dup2(fd, target)
            os.close(fd)
    return {"code": code, "value": value, "error": error}


def _main(argv: list[str]) -> int:
    import faulthandler
    import gc

    from clrctl import interrupts

    interrupts.record_early()  # signals from now on wait for a job's own handlers
    out = os.fdopen(int(argv[0]), "w", buffering=1)
    max_rss = float(argv[1]) or None
    _preload(argv[2:])
    faulthandler.enable(file=sys.stderr)  # a crash's report lands in the job's log (fd 2)
    state = _State()
    gc.collect()
    gc.freeze()  # the preloaded objects: no collection walks them again
    baseline = _rss_mb()
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            out.write(json.dumps({"started": True}) + "\n")
        except (BrokenPipeError, OSError):
            return 0  # the parent is gone
        result = _run(json.loads(line))
        state.restore()
        interrupts.record_early()
        gc.collect()
        rss = _rss_mb()
        result["rss_mb"] = rss
        result["retired"] = result["code"] == 130 or (max_rss is not None and rss > baseline + max_rss)
        try:
            out.write(json.dumps(result) + "\n")
        except (BrokenPipeError, OSError):
            return 0  # the parent is gone
        if result["retired"]:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
