"""The loop's events: what watches a training run plugs in here, not into the loop.

A :class:`Callback` overrides the events it needs. They come at the loop's host syncs
(flushes), evaluations, stage and epoch ends, and the run's end — never per step, so the
loop's cost per step does not grow with what watches it. Any callback may ask the run to
stop with :meth:`~clrctl.engine.loop.Loop.request_stop` (a reason, and whether that is an
interruption to resume or a normal end).

Callbacks run in the order given; the run's own (CSV rows, TensorBoard, progress, the
checkpoint cadence, best/target tracking, the summary) are assembled by
:mod:`clrctl.runs.lifecycle`. Rows are lists in :data:`METRIC_COLUMNS` order (+ the stage).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from clrctl.engine.loop import Loop

METRIC_COLUMNS = ["step", "epoch", "lr", "momentum", "loss", "val_loss", "val_acc"]
# A metrics row is a list in METRIC_COLUMNS order (+ the stage): cheaper per step than a dict.
STEP, LR, LOSS, VAL_LOSS, VAL_ACC = (METRIC_COLUMNS.index(c) for c in ("step", "lr", "loss", "val_loss", "val_acc"))
EPOCH_COLUMNS = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "elapsed_s"]


class Callback:
    """Every event of a training run; each does nothing unless overridden."""

    def on_start(self, loop: "Loop") -> None:
        """Before the first step (of this process: a resumed run starts at its checkpoint)."""

    def on_stage_start(self, loop: "Loop", index: int) -> None:
        """Stage ``index`` got its optimizer and schedule (``loop.stage``)."""

    def on_eval(self, loop: "Loop", step: int, val_loss: float, val_acc: Optional[float]) -> None:
        """An evaluation after ``step`` steps (its numbers are also in the interval's last row)."""

    def on_flush(self, loop: "Loop", rows: list[list[Any]], diverged: bool) -> None:
        """The rows since the last flush, losses filled in; ``diverged``: the last row's loss is
        NaN/Inf (the rows after it are dropped and the run ends)."""

    def on_stage_end(self, loop: "Loop", record: dict[str, Any]) -> None:
        """A stage finished: ``record`` is its ``{name, steps, final_val_acc}``."""

    def on_epoch_end(self, loop: "Loop", row: dict[str, Any]) -> None:
        """An epoch finished: ``row`` is its epochs.csv row (the counters are already reset); a
        callback that owns a column of it (``log_columns``) fills it in, before the log writes."""

    def on_end(self, loop: "Loop", status: str, summary: dict[str, Any]) -> None:
        """The run ended with ``status``; ``summary`` is summary.json's content (written after
        every ``on_end``: a callback may add its own keys). Each callback's
        ``on_end`` runs even when an earlier one failed (a full disk)."""


class StopAt(Callback):
    """Stop the run after global step ``step`` as a Ctrl-C there would: the in-process seam
    that tests use for "stop at step k, resume, compare" (no signal, no subprocess)."""

    def __init__(self, step: int):
        self.step = step

    def on_start(self, loop: "Loop") -> None:
        loop.stop_after(self.step)
