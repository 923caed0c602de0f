"""The loop of a vectorised seed group: K seeds' loops stepped as one (``--vectorize``).

Each seed keeps a loop of its own, a :class:`SeedView`: an ordinary
:class:`~clrctl.engine.loop.Loop` with its setup (its data order, its model), its state, its
stage and its callbacks — every file of its run directory is written by the usual callbacks.
What a view does not do is step: :class:`StackedLoop` takes one batch from each seed's own
(seed, epoch) order, steps the stack (:class:`~clrctl.engine.strategy.VectorizedStrategy`)
and, at the syncs, hands each view its rows and its column of the one transfer; the view then
syncs as any loop (evaluation of its own model, stage end, flush, stop, epoch end).

A seed that ends early (its loss diverged, early stopping) leaves the stack at that sync
(:meth:`~clrctl.engine.stack.ModelStack.remove`): its run ends as a run of its own would, and
the others go on without it. A stop requested for the group (a signal) stops every seed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import torch

from clrctl.data.sources import StackedBatches
from clrctl.engine.loop import Diverged, Loop, Stopped
from clrctl.engine.callbacks import VAL_ACC, VAL_LOSS
from clrctl.engine.stack import ModelStack, evaluate_stack
from clrctl.engine.strategy import VectorizedStrategy
from clrctl.optim.groups import build_groups
from clrctl.optim.stages import StageRun, build_stage


class SeedView(Loop):
    """One seed's loop inside a :class:`StackedLoop`: never stepped itself; its flush takes its
    numbers from the stacked loop's transfers (``inbox``)."""

    group: Optional["StackedLoop"] = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.inbox_losses: list[float] = []
        self.inbox_hits = 0.0
        self.inbox_norms: list[float] = []

    def sync_at(self, steps) -> None:
        if self.group is None:
            super().sync_at(steps)
        else:  # every seed flushes at the same steps: their rows come from one transfer
            self.group.sync_at(steps)

    def _evaluate_model(self) -> None:
        result = self.group.evaluation(self) if self.group is not None else None
        if result is None:  # (evaluated alone, as any loop)
            super()._evaluate_model()
            return
        val_loss, val_acc = result
        self._rows[-1][VAL_LOSS], self._rows[-1][VAL_ACC] = val_loss, val_acc
        self.emit("on_eval", self.state.step, val_loss, val_acc)

    def _host_values(self) -> tuple[list[float], list[float]]:
        self.group.deliver()
        losses, hits, norms = self.inbox_losses, [self.inbox_hits], self.inbox_norms
        self.inbox_losses, self.inbox_hits, self.inbox_norms = [], 0.0, []
        if self._norms is not None:  # (the loop takes them from after the hits)
            hits = hits + norms
        return losses, hits


class StackedLoop:
    """Steps the seeds of ``views`` as one stacked model. ``ended(view, error)`` is called for a
    seed whose loop raised :class:`Diverged` or :class:`Stopped` at a sync (after its flush; the
    stack still holds it, so its optimizer state can be saved), before it leaves the stack."""

    def __init__(self, views: list[SeedView], ended: Callable[[SeedView, BaseException], None]):
        self.views = list(views)
        self.ended = ended
        first = self.views[0]
        for view in self.views:
            view.group = self
        self.stack = ModelStack([v.setup.model for v in self.views])
        self.strategy = VectorizedStrategy(self.stack)
        s = first.setup
        self.setup = dataclasses.replace(s, model=self.stack.holder, groups=build_groups(self.stack.holder,
                                                                                           s.config.optimizer))
        self.state = dataclasses.replace(first.state)  # (the counters every view shares: step, epoch, batch)
        self.stage: StageRun = build_stage(self.setup, first.stage.index)
        train = s.config.train
        self._step = self.strategy.stacked_stepper(s.loss_fn, train.clip_grad_norm)
        self._clip = train.clip_grad_norm is not None
        self._stage_column = s.config.has_stages
        self._ends = s.stage_ends
        self._classify = None  # whether the targets are classes (known from the first batch)
        self._pending: list[tuple[list[Any], torch.Tensor, Optional[torch.Tensor], int]] = []
        self._held_hits: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._new_rows: list[list[Any]] = []
        self._due = 0
        self._evals = None
        self._batches = StackedBatches([v.setup.data.train for v in self.views])
        self._every = train.eval_every

    # -- from the views and the run --------------------------------------------------
    def restore_stack(self) -> None:
        """After each view was restored from its checkpoint: the stack from their models and
        optimizers (and the stage's schedule from the first's)."""
        self.stack.copy_in()
        views = self.views
        if all(v.stage.index == self.stage.index for v in views):
            ModelStack.load_optimizer_states(self.stage.optimizer, [v.stage.optimizer for v in views])
            self.stage.schedule.load_state_dict(views[0].stage.schedule.state_dict())

    def request_stop(self, reason: str) -> None:
        for view in self.views:
            view.request_stop(reason)
        self._due = 0

    def sync_at(self, steps) -> None:
        for view in self.views:
            Loop.sync_at(view, steps)
        self._due = min([self._due, *(v._due for v in self.views)])

    def sync_view(self, view: SeedView) -> None:
        """``view``'s model, optimizer state and schedule as the stack holds them (a checkpoint next)."""
        index = self.views.index(view)
        self.stack.copy_out()
        if view.stage.index == self.stage.index:
            ModelStack.optimizer_state_of(self.stage.optimizer, view.stage.optimizer, index)
            view.stage.schedule.load_state_dict(self.stage.schedule.state_dict())

    @property
    def stopping(self) -> bool:
        return any(v.stopping for v in self.views)

    def evaluation(self, view: SeedView) -> Optional[tuple[float, Optional[float]]]:
        """``view``'s (val_loss, val_acc) at this sync: every seed's, evaluated at once on the
        first request of the sync (None: each seed evaluates alone)."""
        if self._evals is None:
            self._evals = evaluate_stack(self.stack, [v.setup.data.val for v in self.views]) or False
        return self._evals[self.views.index(view)] if self._evals else None

    def deliver(self) -> None:
        """The one transfer of the steps since the last: each view's column into its inbox."""
        if not self._pending:
            return
        losses = torch.stack([loss for _, loss, _, _ in self._pending])  # (rows, K)
        parts = [losses.flatten().float()]
        if self._held_hits:
            logits = torch.cat([lg for lg, _ in self._held_hits], dim=1)
            labels = torch.cat([y for _, y in self._held_hits], dim=1)
            parts.append(torch.eq(logits.argmax(-1), labels).sum(1, dtype=torch.float32))
        if self._clip:
            parts.append(torch.stack([n for _, _, n, _ in self._pending]).flatten().float())
        rows, k = len(self._pending), self.stack.size
        values = torch.cat(parts).tolist()
        hits = values[rows * k:rows * k + k] if self._held_hits else [0.0] * k
        norms = values[rows * k + (k if self._held_hits else 0):]
        for i, view in enumerate(self.views):
            view.inbox_losses += values[i:rows * k:k]
            view.inbox_hits += hits[i]
            if self._clip:
                view.inbox_norms += norms[i::k]
        self._pending.clear()
        self._held_hits.clear()

    # -- the loop --------------------------------------------------------------------
    def run(self) -> None:
        """Train every seed to its end (each ends through ``ended`` or completes)."""
        for view in self.views:
            view.emit("on_start")
            view.setup.model.train()
        self.stack.base.train()  # (the module functional_call runs: dropout in training mode)
        state = self.state
        while self.views and (state.step < self.setup.total_steps or state.batch > 0):
            self._run_epoch(state.epoch)

    def _run_epoch(self, epoch: int) -> None:
        views, state = self.views, self.state
        last = len(self.setup.data.train) - 1
        start = state.batch
        for view in views:
            view._epoch_last_step = view.state.step + last - view.state.batch + 1
            view._schedule_due()
        self._due = min(v._due for v in views)
        pending, held, new_rows = self._pending, self._held_hits, self._new_rows
        step = state.step
        for index, (xs, ys) in enumerate(self._batches.batches(epoch, start), start=start):
            if step >= self._ends[self.stage.index]:
                self._next_stage()
            stage = self.stage
            schedule = stage.schedule
            lr = schedule.lr()
            row = [step, epoch + 1, lr, schedule.momentum(), None, None, None]
            if self._stage_column:
                row.append(stage.stage.name)
            loss, logits, size, norms = self._step(stage.optimizer, xs, ys)
            schedule.step()
            pending.append((row, loss, norms, size))
            if not ys.is_floating_point():
                held.append((logits, ys))
            new_rows.append(row)
            step += 1
            if step >= self._due:
                epoch_end = self._sync(step, lr, index + 1, index == last)
                if not self.views:
                    return
                if epoch_end:
                    break
        state.step, state.epoch, state.batch = step, epoch + 1, 0
        for view in list(self.views):
            self.sync_view(view)
            view._end_epoch(epoch)

    def _sync(self, step: int, lr: float, batch: int, last: bool) -> bool:
        """Every view's sync after ``step`` steps; views that ended leave the stack."""
        every = self._every
        if last or step in self._ends or (every and step % every == 0):
            self.stack.copy_out()  # (their evaluations and best.pt read their own models)
        rows, sizes = self._new_rows, [size for _, _, _, size in self._pending[-len(self._new_rows):]]
        endings: list[tuple[SeedView, BaseException]] = []
        epoch_end = last
        for n, view in enumerate(self.views):
            view._rows.extend(rows if n == 0 else [r.copy() for r in rows])
            view._sizes.extend(sizes)
            view.state.step, view.state.last_lr, view.state.batch = step, lr, batch
        self._new_rows.clear()  # (the epoch's loop holds this list)
        self._evals = None  # (evaluated on the first view's request)
        self.state.step, self.state.batch = step, batch
        for view in self.views:
            try:
                epoch_end = view._sync(last)
            except (Diverged, Stopped) as err:
                endings.append((view, err))
        for view, err in endings:
            self.ended(view, err)
            index = self.views.index(view)
            self.stack.remove(index, self.stage.optimizer)
            self._batches.remove(index)
            self.views.remove(view)
            view.group = None
        self._due = min((v._due for v in self.views), default=0)
        return epoch_end or step >= self._ends[-1]

    def _next_stage(self) -> None:
        for view in self.views:
            view._next_stage()
        self.stage = build_stage(self.setup, self.stage.index + 1)
