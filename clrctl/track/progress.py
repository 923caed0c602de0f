"""Progress of ``range-test --seeds N``: where people look at it.

On a terminal, one rich display holds an overall bar (seeds done, with N > 1) above the
running seed's bar. With ``-q``, or when stdout is not a terminal (CI logs, ``| tee``), no bar
is redrawn: each seed ends with one plain line instead, so a log reads top to bottom.
"""

from __future__ import annotations

import time
from typing import Optional

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from clrctl.app import console
from clrctl.track.reporting import due, say


class SeedProgress:
    """One display for all seeds of a range test; :meth:`reporter` gives each seed's
    :class:`~clrctl.track.reporter.Reporter`."""

    def __init__(self, seeds: list[int], quiet: bool = False, label: Optional[str] = None):
        self.seeds, self.done = list(seeds), 0
        self.label = label
        self.plain = quiet or not console.is_terminal
        self.progress: Optional[Progress] = None
        self.overall = None
        if not self.plain:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=console, transient=False,
            )

    def reporter(self, seed: int) -> "_SeedReporter":
        return _SeedReporter(self, seed)

    def _name(self, seed: int) -> str:
        if self.label is not None:
            return self.label
        return f"seed {seed}" if len(self.seeds) > 1 else "range-test"

    def _begin(self) -> None:
        if self.progress is not None and self.done == 0 and self.overall is None:
            self.progress.start()
            if len(self.seeds) > 1:
                self.overall = self.progress.add_task("seeds", total=len(self.seeds), info="")

    def _end(self, line: str) -> None:
        self.done += 1
        if self.progress is None:
            say(line)
            return
        if self.overall is not None:
            self.progress.update(self.overall, completed=self.done)
        if self.done >= len(self.seeds):
            self.progress.stop()


class _SeedReporter:
    """One seed's sweep: a bar in the shared display, or one plain line when it ends."""

    def __init__(self, owner: SeedProgress, seed: int):
        self.owner, self.seed = owner, seed
        self.task = None
        self.total = self.steps = 0
        self.lr: Optional[float] = None
        self.loss: Optional[float] = None
        self.val_acc: Optional[float] = None
        self.t0 = time.perf_counter()
        self._next_update = 0.0

    def start(self, total_steps: int, done_steps: int) -> None:
        self.total, self.steps, self.t0 = total_steps, done_steps, time.perf_counter()
        self.owner._begin()
        if self.owner.progress is not None:
            self.task = self.owner.progress.add_task(escape(self.owner._name(self.seed)), total=total_steps,
                                                     completed=done_steps, info="")

    def advance(self, steps_done: int, lr: float) -> None:
        self.steps, self.lr = steps_done, lr
        if due(self):  # (metrics and close bring the bar up to date)
            self._show()

    def metrics(self, steps_done: int, loss: Optional[float], val_acc: Optional[float]) -> None:
        self.steps = steps_done
        if loss is not None:
            self.loss = loss
        if val_acc is not None:
            self.val_acc = val_acc
        self._show()

    def epoch(self, row) -> None: ...

    def close(self) -> None:
        if self.task is not None:
            self.owner.progress.update(self.task, completed=self.steps, info=self._info())
        n, index = len(self.owner.seeds), self.owner.done + 1
        where = f" ({index}/{n})" if n > 1 else ""
        self.owner._end(f"{self.owner._name(self.seed)}{where}: {self.steps}/{self.total} steps, {self._info()}, "
                        f"{time.perf_counter() - self.t0:.1f} s")

    def _info(self) -> str:
        def fmt(value: Optional[float], spec: str) -> str:
            return "-" if value is None else format(value, spec)

        return f"lr {fmt(self.lr, '.4g')}  loss {fmt(self.loss, '.4g')}  val_acc {fmt(self.val_acc, '.4f')}"

    def _show(self) -> None:
        if self.task is not None:
            self.owner.progress.update(self.task, completed=self.steps, info=self._info())
