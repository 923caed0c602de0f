"""Averaged weights and snapshot ensembles, as loop callbacks (SPEC "Training extras").

- :class:`EmaWeights` (``train.ema``): an exponential moving average of the weights (and of
  the buffers: BatchNorm statistics too), updated after *every* optimizer step, evaluated at
  each epoch end (``ema_val_loss``, ``ema_val_acc`` in epochs.csv) and at the end
  (``final_ema_val_acc``); ``checkpoints/ema.pt``.
- :class:`SwaWeights` (``train.swa``): stochastic weight averaging (Izmailov et al. 2018,
  arXiv 1803.05407), an equal average of the weights at each cycle end of a cyclic policy (or
  each epoch end of any other) from ``start`` on; BatchNorm statistics recomputed over the
  training data (``update_bn``) before it is evaluated at the end (``swa_val_acc``);
  ``checkpoints/swa.pt``.
- :class:`SnapshotEnsemble` (``train.snapshots``): the weights at each cycle's end (Huang et
  al. 2017, arXiv 1704.00109), ``checkpoints/snapshot-<step>.pt``, with ``snapshots.csv``:
  each snapshot's accuracy and that of the softmax average of the last K
  (``train.snapshot_ensemble``; ``ensemble_val_acc`` in the summary).

All three are on ``torch.optim.swa_utils.AveragedModel`` (or plain state_dicts) and
evaluated with the loop's own :func:`~clrctl.engine.step.evaluate` (summed over the processes
under DDP, so every process keeps them). metrics.csv keeps the raw model's numbers, and
``best.pt``/``last.pt`` the raw weights; the averages ride in ``last.pt`` (the ``ema``,
``swa`` and ``snapshots`` parts of :func:`clrctl.runs.checkpoints.payload`), so a resumed run
continues them exactly. The ``.pt`` files hold plain state_dicts, loadable as ``model.weights``.

Why the EMA is updated per step, and how that stays free when it is off: the loop dispatches
events only at its host syncs, and an EMA over k steps, e <- d^k e + (1 - d) sum d^(k-1-i) w_i,
needs every step's weights w_i — updating every ``log_every`` steps with decay d^k would
average only the weights seen at syncs, another (and noisier) average. So the EMA asks the
loop to run a function after each optimizer step (:meth:`~clrctl.engine.loop.Loop.after_each_step`),
which wraps the stepper: a run without EMA runs the same step as before, with no check at all.
The update itself is one ``torch._foreach_lerp_`` over the parameters (no host sync: torch's
``AveragedModel.update_parameters`` would read its CPU counter and copy it to the device each
step). SWA and snapshots happen at known steps (cycle ends, :mod:`clrctl.optim.cycles`): the
loop syncs there on request (:meth:`~clrctl.engine.loop.Loop.sync_at`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from clrctl.config.schema import resolve_steps
from clrctl.engine.callbacks import Callback
from clrctl.engine.step import evaluate
from clrctl.optim.cycles import snapshot_steps, swa_steps

SNAPSHOT_COLUMNS = ["step", "val_acc", "ensemble_val_acc"]


def averaging_callbacks(setup, run, strategy) -> list[Callback]:
    """The callbacks of the keys that are set (none by default), on every process."""
    train = setup.config.train
    found: list[Callback] = []
    if train.ema is not None:
        found.append(EmaWeights(setup, run, strategy))
    if train.swa is not None:
        found.append(SwaWeights(setup, run, strategy))
    if train.snapshots:
        found.append(SnapshotEnsemble(setup, run, strategy))
    return found


def epoch_columns(config) -> list[str]:
    """The columns these callbacks add to epochs.csv."""
    return ["ema_val_loss", "ema_val_acc"] if config.train.ema is not None else []


class _Averaging(Callback):
    """What the three share: the setup, where files go, a saved state to load at the start."""

    checkpoint_key = ""  # the part of last.pt holding this callback's state

    def __init__(self, setup, run, strategy):
        self.setup, self.run, self.strategy = setup, run, strategy
        self._saved: Optional[dict[str, Any]] = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A checkpoint's part, applied at ``on_start`` (when the loop has laid out the model)."""
        self._saved = state

    def _evaluate(self, model) -> tuple[float, Optional[float]]:
        s = self.setup
        return evaluate(model, s.data.val, s.loss_fn, self.strategy.eval_reduce)

    def _save(self, state_dict: dict[str, Any], name: str) -> None:
        if self.strategy.writes:
            self.run.save_checkpoint(state_dict, name)


class EmaWeights(_Averaging):
    checkpoint_key = "ema"

    def __init__(self, setup, run, strategy):
        super().__init__(setup, run, strategy)
        self.decay = setup.config.train.ema
        self.averaged: Optional[AveragedModel] = None
        self._count = 0  # updates so far (AveragedModel.n_averaged, kept on the host)
        self._last: Optional[tuple[int, float, Optional[float]]] = None  # (step, val_loss, val_acc)

    def on_start(self, loop) -> None:
        model = self.setup.model
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
        if self._saved is not None:
            self.averaged.load_state_dict(self._saved)
            self._count = int(self._saved["n_averaged"])
        self._lerp = get_ema_multi_avg_fn(self.decay)
        self._pairs = _grouped(list(self.averaged.module.parameters()) + list(self.averaged.module.buffers()),
                               list(model.parameters()) + list(model.buffers()))
        loop.after_each_step(self.update)

    def update(self) -> None:
        if self._count == 0:  # torch's first update copies the weights
            self.averaged.update_parameters(self.setup.model)
        else:
            for own, current in self._pairs:
                self._lerp(own, current, None)
        self._count += 1

    def state_dict(self) -> dict[str, Any]:
        self.averaged.n_averaged.fill_(self._count)
        return self.averaged.state_dict()

    def on_epoch_end(self, loop, row) -> None:
        val_loss, val_acc = self._evaluate(self.averaged.module)
        self._last = (loop.state.step, val_loss, val_acc)
        row["ema_val_loss"], row["ema_val_acc"] = val_loss, val_acc

    def on_end(self, loop, status, summary) -> None:
        if status not in ("completed", "interrupted") or self._count == 0:
            return
        if status == "completed":
            if self._last is None or self._last[0] != loop.state.step:
                self._last = (loop.state.step, *self._evaluate(self.averaged.module))
            summary["final_ema_val_acc"] = self._last[2]
        self._save(self.averaged.module.state_dict(), "ema.pt")


class SwaWeights(_Averaging):
    checkpoint_key = "swa"

    def __init__(self, setup, run, strategy):
        super().__init__(setup, run, strategy)
        start = resolve_steps(setup.config.train.swa.start, setup.steps_per_epoch)
        self.points = set(swa_steps(setup.stages, setup.steps_per_epoch, start))
        self.averaged: Optional[AveragedModel] = None

    def on_start(self, loop) -> None:
        self.averaged = AveragedModel(self.setup.model)  # an equal average; buffers follow the model
        if self._saved is not None:
            self.averaged.load_state_dict(self._saved)
        loop.sync_at(self.points)

    def on_flush(self, loop, rows, diverged: bool) -> None:
        if not diverged and loop.state.step in self.points:
            self.averaged.update_parameters(self.setup.model)

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def on_end(self, loop, status, summary) -> None:
        if status != "completed" or int(self.averaged.n_averaged) == 0:
            return
        s = self.setup
        devices = [s.device] if s.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # (augmentation, dropout: the run's RNG untouched)
            update_bn(s.data.train.batches(0), self.averaged.module)
        summary["swa_val_acc"] = self._evaluate(self.averaged.module)[1]
        self._save(self.averaged.module.state_dict(), "swa.pt")


class SnapshotEnsemble(_Averaging):
    checkpoint_key = "snapshots"

    def __init__(self, setup, run, strategy):
        super().__init__(setup, run, strategy)
        self.points = set(snapshot_steps(setup.stages, setup.steps_per_epoch))
        self.size = setup.config.train.snapshot_ensemble  # None: every snapshot
        self.rows: list[list[Any]] = []  # [step, val_acc, ensemble_val_acc] of each snapshot
        self.probs: list[torch.Tensor] = []  # the validation softmax of the last `size` snapshots
        self.log = None

    def on_start(self, loop) -> None:
        if self._saved is not None:
            self.rows = [list(row) for row in self._saved["rows"]]
            self.probs = [p.to(self.setup.device) for p in self._saved["probs"]]
        if self.strategy.writes:  # the checkpoint's rows, then the new ones (rows after it are redone)
            (self.run.path / "snapshots.csv").unlink(missing_ok=True)
            self.log = self.run.csv("snapshots.csv", SNAPSHOT_COLUMNS)
            self.log.write_lists(self.rows)
            self.log.flush()
        loop.sync_at(self.points)

    def on_flush(self, loop, rows, diverged: bool) -> None:
        step = loop.state.step
        if not diverged and step in self.points and (not self.rows or self.rows[-1][0] < step):
            self.take(step)

    def take(self, step: int) -> None:
        probs, labels = _predict(self.setup.model, self.setup.data.val)
        self.probs = (self.probs + [probs])[-self.size:] if self.size else self.probs + [probs]
        ensemble = torch.stack(self.probs).mean(0)
        row = [step, self._accuracy(probs, labels), self._accuracy(ensemble, labels)]
        self.rows.append(row)
        self._save(self.setup.model.state_dict(), f"snapshot-{step}.pt")
        if self.log is not None:
            self.log.write_lists([row])
            self.log.flush()

    def _accuracy(self, probs: torch.Tensor, labels: torch.Tensor) -> float:
        correct = (probs.argmax(1) == labels).sum().float()
        reduce = self.strategy.eval_reduce
        if reduce is None:
            return float(correct) / len(labels)
        _, hits, seen = reduce(torch.zeros((), device=correct.device), correct, len(labels))
        return hits / seen

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [list(row) for row in self.rows], "probs": list(self.probs)}

    def on_end(self, loop, status, summary) -> None:
        if status == "completed" and self.rows:
            summary["ensemble_val_acc"] = self.rows[-1][2]
        if self.log is not None:
            self.log.close()


@torch.no_grad()
def _predict(model, source) -> tuple[torch.Tensor, torch.Tensor]:
    """The softmax of ``model`` over ``source`` (float32) and the labels, batch after batch."""
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for x, y in source.batches(0):
        probs.append(torch.softmax(model(x).float(), dim=1))
        labels.append(y)
    model.train(was_training)
    return torch.cat(probs), torch.cat(labels)


def _grouped(own: list[torch.Tensor], current: list[torch.Tensor]) -> list[tuple[list, list]]:
    """Pairs of tensor lists of one device and dtype (what a foreach kernel takes)."""
    groups: dict[tuple, tuple[list, list]] = {}
    for a, b in zip(own, current):
        mine, theirs = groups.setdefault((a.device, a.dtype), ([], []))
        mine.append(a.detach())
        theirs.append(b.detach())
    return list(groups.values())
