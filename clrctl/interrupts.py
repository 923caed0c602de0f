"""Ctrl-C and SIGTERM outside the training loop (SPEC.md: both are exit 130, one line).

The trainer installs its own handler for the loop (finish the step, flush, checkpoint). Around
it — importing, building data and model, creating the run directory, writing plots — the CLI
makes both signals raise :class:`KeyboardInterrupt`, which the library turns into
:class:`~clrctl.errors.Interrupted` once a run directory exists and ``main()`` reports otherwise.

- :func:`record_early`: while the CLI is still importing (typer, rich, pydantic: about a
  second), signals are recorded, not raised, so that no traceback escapes an import.
- :func:`install`: from ``main()`` on, both raise KeyboardInterrupt (held back while a module
  is being imported, see :func:`_raise`); says whether one came early.
- :func:`deferred`: a short critical section (a run directory's first files) that a signal
  cannot cut in half; it is raised again right after the section.
- :func:`stopping`: an interrupt was accepted and the run is writing how it ended; from then
  on, until ``main()`` reports it, further signals are only recorded: however many arrive,
  the run's files are complete and the exit code is 130.

Stdlib only, so that importing it costs nothing. Signals reach only the main thread; from any
other thread these are no-ops.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_early: list[int] = []


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _record(signum: int, _frame: Any) -> None:
    _early.append(signum)


_pending: list[int] = []  # an interrupt raised but maybe swallowed (see check())
_stopping: list[bool] = []  # non-empty once an interrupt was accepted (see stopping())


def stopping() -> None:
    """An interrupt is being handled (the run records how it ended): from now on, signals
    that reach the CLI's handler are dropped instead of raised (see :func:`install`)."""
    if not _stopping:
        _stopping.append(True)


def is_stopping() -> bool:
    return bool(_stopping)


def check() -> None:
    """Raise an interrupt that was raised before but swallowed: Python ignores exceptions
    that land in ``__del__``, weakref callbacks or a GC pass ("Exception ignored in …"), so
    the safe points of start-up ask again."""
    if _pending:
        _pending.clear()
        raise KeyboardInterrupt


def clear() -> None:
    """The interrupt was handled (reported): nothing is pending any more, and a held one's
    retry timer (see :func:`_hold`) must not fire later, e.g. during interpreter exit."""
    _pending.clear()
    if _main_thread() and hasattr(signal, "setitimer"):
        handler = signal.getsignal(signal.SIGALRM)
        if getattr(handler, "held_interrupt", False):
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)


def _raise(signum: int, frame: Any) -> None:
    if _stopping:  # one interrupt is being handled already: this one changes nothing
        return
    _pending.append(signum)
    if _importing(frame) and hasattr(signal, "setitimer"):
        # A KeyboardInterrupt raised while an extension module initialises (torch's pybind11
        # code calls back into Python) aborts the process ("terminate called …", exit 134).
        # Deliver the signal once the import is over instead: look again every 50 ms.
        _hold(signum)
        return
    raise KeyboardInterrupt


def _importing(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _hold(signum: int) -> None:
    previous = signal.getsignal(signal.SIGALRM)
    if getattr(previous, "held_interrupt", False):  # already waiting for this import to end
        return

    def retry(_alarm: int, frame: Any) -> None:
        if _importing(frame):
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
        # The signal again, to whichever handler is in place *now*: the import may have been
        # the last of start-up, and the trainer's finish-the-step handler (or a deferred
        # block) taken over since; raising KeyboardInterrupt would cut through it.
        _pending.clear()
        signal.raise_signal(signum)

    retry.held_interrupt = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGALRM, retry)
    signal.setitimer(signal.ITIMER_REAL, 0.05)


def record_early() -> None:
    """Record SIGINT/SIGTERM instead of acting on them, until :func:`install` runs."""
    if _main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _record)


def install() -> tuple[dict[int, Any], bool]:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt; returns (previous handlers, whether a
    signal was recorded by :func:`record_early` before this call)."""
    if not _main_thread():
        return {}, False
    _stopping.clear()  # (a new command: in-process callers run several)
    previous = {sig: signal.signal(sig, _raise) for sig in SIGNALS}
    early = bool(_early)  # read after the swap: a signal cannot slip between the two
    _early.clear()
    return previous, early


def restore(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def ignore() -> None:
    """Ignore both signals from now on (while the outcome of an interrupt is being reported)."""
    if _main_thread():
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM during the block; one that arrived is re-raised (to whatever handler
    was in place) when the block ends, so the block's files are written whole or not at all."""
    if not _main_thread():
        yield
        return
    check()  # an interrupt before the block must not be lost in it
    arrived: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: arrived.append(signum)) for sig in SIGNALS}
    try:
        yield
    finally:
        restore(previous)
    if arrived:
        signal.raise_signal(arrived[0])


@contextmanager
def handled_by(handler: Any) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` during the block (the trainer's finish-the-step
    rule, DDP's agree-to-stop flag, the sweep's forward-to-workers); the previous handlers
    come back after it. A no-op outside the main thread, where signals never arrive."""
    if not _main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        restore(previous)

