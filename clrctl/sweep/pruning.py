"""Pruning a search's trial from its evaluations: a loop callback (torch-free).

At each evaluation the metric (``val_acc`` or ``val_loss``) is reported to the Optuna trial
at the training step; when the study's pruner says the trial is hopeless, the run is asked
to stop as a normal end with status ``pruned`` — its last rows, checkpoint, summary and
plots are written as for any run that ends, and ``run.json`` says ``pruned``.
"""

from __future__ import annotations

import math
from typing import Optional

from clrctl.engine.callbacks import Callback


class PruneOnEval(Callback):
    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric
        self.last: Optional[float] = None  # the last value reported

    def on_eval(self, loop, step, val_loss, val_acc) -> None:
        value = val_acc if self.metric == "val_acc" else val_loss
        if value is None or not math.isfinite(value):
            return
        self.last = float(value)
        self.trial.report(self.last, step)
        if self.trial.should_prune():
            loop.request_stop("pruned", interrupted=False, status="pruned")
