"""A training run's checkpoints: what ``last.pt`` holds and how a loop continues from it, and
the cadence, as a loop callback: ``last.pt`` at epoch ends (throttled by
``train.checkpoint_every``), ``best.pt`` for the best evaluation so far."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Optional

from clrctl.engine.callbacks import Callback
from clrctl.files import checkpoint
from clrctl.optim.groups import load_optimizer_state, torch_param_groups


class Checkpoints(Callback):
    """``best.pt`` holds a snapshot of the weights taken at the best evaluation, written with
    the next ``last.pt`` (or at the end); ``last.pt`` is written at most every
    ``checkpoint_every`` seconds at epoch ends: a small model's epoch takes milliseconds, and
    a write each would cost it a tenth of its speed. Resuming is exact from any ``last.pt``;
    a killed run redoes the steps since the last."""

    def __init__(self, run, every_s: float):
        self.run, self.every_s = run, every_s
        self._saved_at = time.perf_counter()
        self._best: Optional[dict[str, Any]] = None

    def on_eval(self, loop, step, val_loss, val_acc) -> None:
        # (the Evaluations callback, before this one, has just recorded it)
        if val_acc is not None and loop.state.best_step == step and loop.state.best_val_acc == val_acc:
            self._best = {"model": checkpoint.snapshot(loop.setup.model.state_dict()), "step": step,
                          "val_acc": val_acc}

    def on_flush(self, loop, rows, diverged: bool) -> None:
        if diverged and self._best is not None and self._best["step"] != loop.state.best_step:
            self._best = None  # the weights of an evaluation dropped with its rows

    def on_epoch_end(self, loop, row) -> None:
        self.save(loop, force=loop.state.step >= loop.setup.total_steps)

    def on_end(self, loop, status, summary) -> None:
        self.save_best()

    def save(self, loop, force: bool = True) -> None:
        """``last.pt``, and ``best.pt`` when a better model is waiting; unless ``force``d (the
        run's end, an interrupt), only once ``checkpoint_every`` seconds have passed."""
        if not force and time.perf_counter() - self._saved_at < self.every_s:
            return
        self._saved_at = time.perf_counter()
        self.save_best()
        self.run.save_checkpoint(payload(loop), "last.pt")

    def save_best(self) -> None:
        if self._best is not None:
            self.run.save_checkpoint(self._best, "best.pt", copy=False)
            self._best = None


def payload(loop) -> dict[str, Any]:
    """What ``last.pt`` holds: enough to continue bit for bit (see :func:`restore`)."""
    state = asdict(loop.state)
    state["elapsed_s"] = loop.elapsed()
    saved = {
        "model": loop.setup.model.state_dict(), "optimizer": loop.stage.optimizer.state_dict(),
        "schedule": loop.stage.schedule.state_dict(), "scaler": loop.scaler.state_dict(),
        "stage": loop.stage.index, "state": state, "rng": checkpoint.rng_state(),
        # what callbacks keep of their own (averaged weights: "ema", "swa", "snapshots")
        **{callback.checkpoint_key: callback.state_dict() for callback in _parts(loop)},
    }
    if loop.stage.averaged is not None:  # Schedule-Free: "model" is the average; training goes on from y
        saved["train_model"] = saved["model"]
        with loop.stage.averaged():
            saved["model"] = checkpoint.snapshot(loop.setup.model.state_dict())
    return saved


def _parts(loop) -> list:
    """The callbacks whose state a checkpoint carries (a ``checkpoint_key`` and a state_dict)."""
    return [callback for callback in loop.callbacks if getattr(callback, "checkpoint_key", None)]


def restore(loop, saved: dict[str, Any]) -> None:
    """Continue ``loop`` from a ``last.pt``: the optimizer state counts only inside the stage
    that saved it — a run stopped exactly at a stage boundary starts the next stage afresh."""
    s = loop.setup
    s.model.load_state_dict(saved.get("train_model", saved["model"]))
    loop.scaler.load_state_dict(saved["scaler"])
    if saved.get("stage", 0) == loop.stage.index:
        stage = loop.stage.stage  # (the layout of checkpoints from before alike groups were merged)
        unmerged = torch_param_groups(s.groups, s.model, stage.optimizer, stage.freeze, merge=False)
        load_optimizer_state(loop.stage.optimizer, saved["optimizer"], unmerged)
        loop.stage.schedule.load_state_dict(saved["schedule"])
    checkpoint.restore_rng(saved["rng"])
    for callback in _parts(loop):  # (a checkpoint without a part: that callback starts afresh)
        if isinstance(saved.get(callback.checkpoint_key), dict):
            callback.load_state_dict(saved[callback.checkpoint_key])
