"""The training loop: steps, stages and the periodic host sync; everything else is an event.

One optimizer step per batch, the stage's LR policy stepped after each. Losses stay on the
device and the host syncs only every ``train.log_every`` steps, at evaluations and at epoch
ends (the "flush"); divergence (NaN/Inf loss) is detected there. Between two syncs a step does
one comparison beyond the step itself: ``step >= due``, the next step at which anything is
due (a flush, an evaluation, a stage or epoch end, a requested stop). What watches the run —
CSV rows, TensorBoard, progress, checkpoints, best/target tracking, the summary — is a
:class:`~clrctl.engine.callbacks.Callback`; what differs between one process and DDP is the
:class:`~clrctl.engine.strategy.Strategy`.

Batches are a pure function of (seed, epoch) and checkpoints carry every RNG state, so a run
resumed from :class:`LoopState` continues exactly where it stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from clrctl.engine.callbacks import LOSS, LR, STEP, VAL_ACC, VAL_LOSS, Callback
from clrctl.engine.setup import Setup
from clrctl.engine.step import FastPath, Hits, StepExtras, evaluate
from clrctl.engine.strategy import Strategy
from clrctl.optim.stages import StageRun, build_stage


@dataclass
class LoopState:
    """Counters that a checkpoint carries; ``epoch`` counts completed epochs."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches done in the current epoch (non-zero after a mid-epoch interrupt)
    elapsed_s: float = 0.0
    best_val_acc: Optional[float] = None
    best_step: Optional[int] = None
    final_val_acc: Optional[float] = None
    final_val_loss: Optional[float] = None
    steps_to_target: Optional[int] = None
    stages: list = field(default_factory=list)  # {name, steps, final_val_acc} of finished stages
    epoch_loss_sum: float = 0.0  # sample-weighted train loss of the current epoch so far
    epoch_correct: float = 0.0
    epoch_seen: int = 0
    last_lr: Optional[float] = None  # the LR the latest step trained at
    # What callbacks keep across a resume, by name (early stopping's patience, the last TTA
    # accuracy): plain numbers, carried by last.pt with the rest (an older one has none).
    extras: dict = field(default_factory=dict)


class Diverged(Exception):
    """The loss of step ``step`` was NaN/Inf (the rows up to it are flushed)."""

    def __init__(self, step: int, lr: float, loss: float):
        super().__init__(step, lr, loss)
        self.step, self.lr, self.loss = step, lr, loss


class Stopped(Exception):
    """A stop was requested (a signal, a callback) and every process reached it."""

    def __init__(self, reason: str, interrupted: bool, status: Optional[str] = None):
        super().__init__(reason)
        self.reason, self.interrupted, self.status = reason, interrupted, status


class Loop:
    """Trains a :class:`Setup` stage after stage with one step counter; ``stage`` holds the
    running stage's optimizer and schedule, rebuilt when the next stage begins."""

    def __init__(self, setup: Setup, strategy: Strategy, callbacks: list[Callback] = (),
                 state: Optional[LoopState] = None):
        self.setup, self.strategy, self.callbacks = setup, strategy, list(callbacks)
        self.state = state or LoopState()
        self.stage: StageRun = build_stage(setup, setup.stage_index(self.state.step))
        self.fast = FastPath(setup.config.train, setup.device)
        self.scaler = self.fast.scaler()  # (train.amp: float16 on CUDA, as train.precision: fp16)
        # The model that trains (checkpoints hold setup.model, unwrapped), compiled when asked.
        self.net = self.fast.model(strategy.wrap(self.fast.model_layout(setup.model)))
        self._enter_stage()
        train = setup.config.train
        # train.clip_grad_norm / train.accumulate: another stepper (None: the plain step); the
        # pre-clip gradient norms it keeps become metrics.csv's grad_norm column at each flush.
        self.extras = StepExtras.of(train, keep_norms=True)
        self._step = strategy.stepper(setup.loss_fn, self.fast, self.scaler, train.skip_nonfinite, setup.data.train,
                                      *([self.extras] if self.extras is not None else []))
        self._norms = self.extras.norms if self.extras is not None else None
        self._every, self._log_every = train.eval_every, train.log_every
        self._stage_column = setup.config.has_stages
        self._ends = setup.stage_ends  # (a property that sums the stages: once, not per step)
        # Rows whose loss is still a device tensor, with each step's loss term and global batch
        # size, and the logits behind train accuracy: read at the next flush.
        self._rows: list[list[Any]] = []
        self._losses: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._hits = Hits(per_row=train.skip_nonfinite)
        self._flushed_at = self.state.step  # the step of the last flush
        self._due = 0  # the next step at which the loop must look up (0: at once)
        self._stop_at: Optional[int] = None
        self._sync_steps: list[int] = []  # steps after which a callback asked for a flush (sync_at)
        self.stop_reason: Optional[str] = None  # asked for, not yet reached (DDP: not yet agreed)
        self._stop: Optional[Stopped] = None  # reached: raised after the current step
        self._interrupted = True
        self._stop_status: Optional[str] = None
        self.stopping = False  # the stop is being raised: the run is finishing
        self._t0 = time.perf_counter()

    # -- what callbacks and the run may call -------------------------------------------
    def request_stop(self, reason: str, interrupted: bool = True, agreed: bool = False,
                     status: Optional[str] = None) -> None:
        """Stop after the current step (under DDP: at the next sync, where every rank agrees).
        ``interrupted``: the run is to be resumed (a signal); else it ends normally, with
        ``status`` (e.g. ``pruned``; default ``completed``).
        ``agreed``: every process asks at this same step, on numbers that are the same on all
        of them (an evaluation's, reduced over ranks): the stop needs no sync to agree on and
        comes after this step under DDP too. (A request one process alone makes, such as a
        signal's, must not say so: the others would train on.)"""
        if self.stop_reason is None:
            self.stop_reason, self._interrupted, self._stop_status = reason, interrupted, status
        if self.strategy.stops_at_once or agreed:
            self._stop = Stopped(self.stop_reason, self._interrupted, self._stop_status)
            self._due = 0

    def stop_after(self, step: int) -> None:
        """Stop as interrupted once ``step`` steps are done (the in-process stop seam)."""
        self._stop_at = step
        self._due = min(self._due, step)

    def sync_at(self, steps) -> None:
        """Flush after each of ``steps`` (step counts): the callbacks' ``on_flush`` then sees
        ``loop.state.step`` equal to it (a snapshot at a cycle's end). Free when unused: the
        steps only join the due-step computation done at each sync."""
        self._sync_steps = sorted(set(self._sync_steps) | {s for s in steps if s > self.state.step})
        if self._sync_steps:
            self._due = min(self._due, self._sync_steps[0])

    def after_each_step(self, function) -> None:
        """Call ``function()`` after every optimizer step (an EMA of the weights). The stepper
        itself is wrapped, so a loop without such a function runs exactly the step it ran
        before: no per-step check at all, not even an ``if``."""
        inner = self._step

        def step(net, optimizer, x, y, index):
            result = inner(net, optimizer, x, y, index)
            function()
            return result

        self._step = step

    def elapsed(self) -> float:
        return self.state.elapsed_s + time.perf_counter() - self._t0

    def emit(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    # -- the loop --------------------------------------------------------------------
    def run(self) -> None:
        """Train to the end; raises :class:`Diverged` or :class:`Stopped` (after the rows up
        to there are flushed: a stopped run's state is whole for a checkpoint)."""
        s, state = self.setup, self.state
        self.emit("on_start")
        s.model.train()
        # batch > 0: resumed inside an epoch (possibly its last step) that must be closed
        while state.step < s.total_steps or state.batch > 0:
            self._run_epoch(state.epoch)

    def _run_epoch(self, epoch: int) -> None:
        s, state = self.setup, self.state
        last = len(s.data.train) - 1
        if state.batch == 0 and self._ends[self.stage.index] <= state.step < self._ends[-1]:
            self._next_stage()  # (before the epoch's batches: a stage may bring other data)
        self._epoch_last_step = state.step + last - state.batch + 1
        self._schedule_due()
        rows, losses, sizes, hits = self._rows, self._losses, self._sizes, self._hits
        # A run resumed mid-epoch gets the same epoch's order, minus the batches it has done.
        for index, (x, y) in enumerate(self._train.batches(epoch, start=state.batch), start=state.batch):
            if state.step >= self._ends[self.stage.index]:  # the previous stage is done
                self._next_stage()
            stage = self.stage
            schedule = stage.schedule
            lr = schedule.lr()
            row = [state.step, epoch + 1, lr, schedule.momentum(), None, None, None]
            loss, logits, size = self._step(self._net, stage.optimizer, x, y, index)
            schedule.step()
            if self._stage_column:
                row.append(stage.stage.name)
            rows.append(row)
            losses.append(loss)
            if not y.is_floating_point():  # classification: train accuracy, counted at the flush
                hits.add(logits, y)
            sizes.append(size)
            state.step += 1
            state.last_lr = lr
            state.batch = index + 1
            if state.step >= self._due and self._sync(index == last):
                break
        self._end_epoch(epoch)

    def _sync(self, epoch_end: bool) -> bool:
        """What is due after this step: evaluation, stage end, flush, stop; True at the epoch's end."""
        s, state = self.setup, self.state
        epoch_end = epoch_end or state.step >= self._ends[-1]
        stage_end = state.step == self._ends[self.stage.index]
        every = self._every
        if epoch_end or stage_end or (every and state.step % every == 0):
            self._evaluate()
        if stage_end:
            record = {"name": self.stage.stage.name, "steps": self.stage.stage.length(s.steps_per_epoch),
                      "final_val_acc": state.final_val_acc}
            state.stages.append(record)
            self.emit("on_stage_end", record)
        requested = self._sync_steps and self._sync_steps[0] <= state.step
        if requested:
            del self._sync_steps[0]
        if epoch_end or requested or len(self._rows) >= self._log_every:
            self.flush()
        if self._stop_at is not None and state.step >= self._stop_at and self._stop is None:
            self._stop_at = None
            self.request_stop("stop_at")
        if self._stop is not None:
            self.stopping = True  # (a signal from now on must not abort the run's finishing)
            raise self._stop
        self._schedule_due()
        return epoch_end

    def _schedule_due(self) -> None:
        step, every = self.state.step, self._every
        due = [self._flushed_at + self._log_every, self._epoch_last_step, self._ends[self.stage.index]]
        if every:
            due.append((step // every + 1) * every)
        if self._stop_at is not None:
            due.append(self._stop_at)
        if self._sync_steps:
            due.append(self._sync_steps[0])
        self._due = 0 if self._stop is not None else min(due)

    def _next_stage(self) -> None:
        self.stage = build_stage(self.setup, self.stage.index + 1)
        self._enter_stage()
        self.emit("on_stage_start", self.stage.index)

    def _enter_stage(self) -> None:
        """The running stage's data (its image size) and what it trains on and with: the
        batches and the net, or its head on precomputed features (``Setup.trains_on``) — the
        same unless an epoch starts here (a stage that changes them spans whole epochs)."""
        index = self.stage.index
        self.data = self.setup.stage_data(index)
        self._train, self._net = self.setup.trains_on(index, self.net)

    # -- the host sync ---------------------------------------------------------------
    def flush(self) -> None:
        """The one host sync of the loop: losses to floats, the rows to the callbacks, the
        epoch's train loss and accuracy sums brought up to date."""
        self._flushed_at = self.state.step
        if not self._rows:
            return
        rows, sizes = self._rows[:], self._sizes[:]  # (emptied in place: the step loop holds them)
        losses, hits = self._host_values()
        for held in (self._rows, self._losses, self._sizes):
            held.clear()
        if self._norms is not None:  # (the last values of the one transfer: a column after the rest)
            norms, hits = hits[len(hits) - len(rows):], hits[: len(hits) - len(rows)]
            self._norms.clear()
            for row, norm in zip(rows, norms):
                row.append(norm / self.strategy.world_size)  # (DDP: the same norm, summed over ranks)
        skip_nonfinite = self._hits.per_row
        for i, (row, loss) in enumerate(zip(rows, losses)):
            row[LOSS] = loss
            if not math.isfinite(loss) and not skip_nonfinite:
                self.emit("on_flush", rows[: i + 1], True)
                raise Diverged(row[STEP], row[LR], loss)
        self._count_epoch(losses, hits, sizes)
        self.emit("on_flush", rows, False)

    def _host_values(self) -> tuple[list[float], list[float]]:
        """Each row's loss (over its global batch) and correct predictions, in one transfer;
        under DDP one all-reduce, the stop request riding along."""
        hits = self._hits.take()
        if self._norms is not None:
            hits = hits + [v.float() for v in self._norms]
        losses = self._losses if self._losses[0].dtype == torch.float32 else [v.float() for v in self._losses]
        local = torch.stack(losses + hits)  # one kernel, one transfer (tolist copies to the host)
        n = len(self._rows)
        losses, hits, stop = self.strategy.host_values(local, n, self._sizes, self.stop_reason is not None)
        if stop and self._stop is None:  # (DDP: every rank agreed, at this very step; SIGTERM: the launcher died)
            self._stop = Stopped(self.stop_reason or "SIGTERM", self._interrupted, self._stop_status)
        return losses, hits

    def _count_epoch(self, losses: list[float], hits: list[float], sizes: list[int]) -> None:
        """Add the flushed rows to the epoch's sample-weighted train loss and accuracy, one row
        at a time (so a run resumed between two flushes sums in the same order). A skipped
        non-finite batch (``train.skip_nonfinite``: hits are per row) counts for neither."""
        state = self.state
        for i, (loss, size) in enumerate(zip(losses, sizes)):
            if math.isfinite(loss):
                state.epoch_loss_sum += loss * size
                state.epoch_seen += size
                if self._hits.per_row:
                    state.epoch_correct += hits[i]
        if not self._hits.per_row:
            state.epoch_correct += sum(hits)

    def _evaluate(self) -> None:
        averaged = self.stage.averaged
        if averaged is None:
            self._evaluate_model()
            return
        with averaged():  # Schedule-Free: the evaluation, its events (best.pt) see the average
            self._evaluate_model()

    def _evaluate_model(self) -> None:
        s = self.setup
        val_loss, val_acc = evaluate(s.model, self.data.val, s.loss_fn, self.strategy.eval_reduce)
        self._rows[-1][VAL_LOSS], self._rows[-1][VAL_ACC] = val_loss, val_acc
        self.emit("on_eval", self.state.step, val_loss, val_acc)

    def _end_epoch(self, epoch: int) -> None:
        s, state = self.setup, self.state
        seen = max(state.epoch_seen, 1)
        row = {"epoch": epoch + 1, "step": state.step, "train_loss": state.epoch_loss_sum / seen,
               "train_acc": state.epoch_correct / seen if s.config.train.loss != "mse" else None,
               "val_loss": state.final_val_loss,
               "val_acc": state.final_val_acc, "lr": state.last_lr, "elapsed_s": round(self.elapsed(), 3),
               "stage": self.stage.stage.name}
        state.epoch, state.batch = epoch + 1, 0
        state.epoch_loss_sum = state.epoch_correct = 0.0
        state.epoch_seen = 0
        self.emit("on_epoch_end", row)
