"""Early stopping (``train.early_stop``) as a loop callback: the run stops once its metric
has not improved by more than ``min_delta`` for ``patience`` evaluations in a row.

Improvement is Keras's and Lightning's rule: ``val_acc`` must exceed the best so far by more
than ``min_delta`` (``val_loss``: fall below it by more). The stop is a normal end: the run is
``completed``, its summary says ``stopped_early`` (true, or false when it ran to the end) and
``stop_reason`` says why. Under DDP every rank sees the same reduced evaluation and so asks
at the same step (``agreed``): all of them stop after that very step. The counters live in
the loop's state, so a resumed run keeps its patience (a checkpoint without them starts afresh).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from clrctl.engine.callbacks import Callback

KEY = "early_stop"  # in loop.state.extras: {best, best_step, waited}
REASON = "early stopping"


class EarlyStopping(Callback):
    """Counts the evaluations since the metric last improved; asks the run to stop at ``patience``."""

    def __init__(self, config):
        self.metric, self.patience, self.min_delta = config.metric, config.patience, config.min_delta
        self.asked = False  # (the run stops after the step that asked: nothing to carry over)

    def _counters(self, loop) -> dict[str, Any]:
        return loop.state.extras.setdefault(KEY, {"best": None, "best_step": None, "waited": 0})

    def on_eval(self, loop, step, val_loss, val_acc) -> None:
        counters = self._counters(loop)
        value = val_acc if self.metric == "val_acc" else val_loss
        if self.improved(value, counters["best"]):
            counters.update(best=value, best_step=step, waited=0)
        else:
            counters["waited"] += 1
        if counters["waited"] >= self.patience and step < loop.setup.total_steps:  # (at the end: not early)
            self.asked = True
            loop.request_stop(self.reason(counters), interrupted=False, agreed=True)

    def improved(self, value: Optional[float], best: Optional[float]) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if best is None:
            return True
        return value - self.min_delta > best if self.metric == "val_acc" else value + self.min_delta < best

    def reason(self, counters: dict[str, Any]) -> str:
        by = f" by more than {self.min_delta:g}" if self.min_delta else ""
        best = "none" if counters["best"] is None else f"{counters['best']:.4f} at step {counters['best_step']}"
        return (f"{REASON}: {self.metric} did not improve{by} in {self.patience} evaluation"
                f"{'s' if self.patience != 1 else ''} (best {best})")

    def on_end(self, loop, status, summary) -> None:
        # (a signal that came first makes the run interrupted: it did not stop early, yet)
        summary["stopped_early"] = self.asked and status == "completed"
