"""What a run tells the person watching it: the :class:`Reporter` protocol (silent by default;
:class:`~clrctl.track.reporting.RichReporter` renders it) and :class:`Progress`, the loop
callback that feeds one. The range test calls a Reporter directly, once per step."""

from __future__ import annotations

from typing import Any, Optional

from clrctl.engine.callbacks import LR, STEP, Callback


class Reporter:
    """What a run tells its caller (the CLI renders it with rich). Silent by default."""

    def start(self, total_steps: int, done_steps: int) -> None: ...

    def advance(self, steps_done: int, lr: float) -> None: ...

    def metrics(self, steps_done: int, loss: Optional[float], val_acc: Optional[float]) -> None: ...

    def epoch(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class Progress(Callback):
    """The loop's events as a Reporter's calls: the bar moves at each flush (every
    ``train.log_every`` steps), with the epoch's running train loss — epochs.csv's train_loss
    at its end — not the last batch's (that one may hold a few samples and swings with them)."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter

    def on_start(self, loop) -> None:
        self.reporter.start(loop.setup.total_steps, loop.state.step)

    def on_flush(self, loop, rows, diverged: bool) -> None:
        if diverged:
            return
        state, last = loop.state, rows[-1]
        self.reporter.advance(last[STEP] + 1, last[LR])
        running = state.epoch_loss_sum / state.epoch_seen if state.epoch_seen else None
        self.reporter.metrics(state.step, running, state.final_val_acc)

    def on_epoch_end(self, loop, row) -> None:
        self.reporter.epoch(row)

    def on_end(self, loop, status, summary) -> None:
        self.reporter.close()
