"""Best and target tracking: the summary's ``final_*``, ``best_*`` and ``steps_to_target``
after each evaluation, kept in the loop's state (so that checkpoints carry them)."""

from __future__ import annotations

from typing import Optional

from clrctl.engine.callbacks import STEP, VAL_ACC, VAL_LOSS, Callback


class Evaluations(Callback):
    """Records each evaluation; after a divergence, rebuilds the numbers from the evaluations
    metrics.csv holds (those after the diverged step, up to the sync that saw it, trained on
    NaN weights and are dropped with their rows)."""

    def __init__(self, target: Optional[dict[str, float]]):
        self.target = next(iter(target.items())) if target else None
        self._at_flush: Optional[tuple] = None

    def on_start(self, loop) -> None:
        self._at_flush = self._numbers(loop.state)

    def on_eval(self, loop, step, val_loss, val_acc) -> None:
        self.record(loop.state, val_loss, val_acc, step)

    def on_flush(self, loop, rows, diverged: bool) -> None:
        state = loop.state
        if diverged:
            (state.final_val_loss, state.final_val_acc, state.best_val_acc, state.best_step,
             state.steps_to_target) = self._at_flush
            for row in rows:
                if row[VAL_LOSS] is not None:
                    self.record(state, row[VAL_LOSS], row[VAL_ACC], row[STEP] + 1)
        self._at_flush = self._numbers(state)

    def record(self, state, val_loss: float, val_acc: Optional[float], step: int) -> bool:
        """The summary's numbers after an evaluation at ``step``; True when it is the best yet."""
        state.final_val_loss, state.final_val_acc = val_loss, val_acc
        best = val_acc is not None and (state.best_val_acc is None or val_acc > state.best_val_acc)
        if best:
            state.best_val_acc, state.best_step = val_acc, step
        if self.target and state.steps_to_target is None:
            metric, threshold = self.target
            value = val_acc if metric == "val_acc" else val_loss
            if value is not None and ((value >= threshold) if metric == "val_acc" else (value <= threshold)):
                state.steps_to_target = step
        return best

    @staticmethod
    def _numbers(state) -> tuple:
        return (state.final_val_loss, state.final_val_acc, state.best_val_acc, state.best_step,
                state.steps_to_target)
