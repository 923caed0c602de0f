"""The training loop of ``clrctl train``: one optimizer step per batch, the LR policy stepped
after each, metrics logged to the run directory, checkpoints at epoch ends.

The hot loop keeps losses on the device and syncs with the host only every
``train.log_every`` steps (and at evaluations), so a GPU is never stalled per step. Divergence
(NaN/Inf loss) is detected at those syncs. Batches are a pure function of (seed, epoch), and
checkpoints carry every RNG state, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from clrctl import interrupts

from clrctl.runs import checkpoint

from clrctl.engine import ddp as distributed

from clrctl.track import tensorboard
from clrctl.data.datasets import BatchSource
from clrctl.errors import DataError, Interrupted, RunFailed
from clrctl.optim.groups import load_optimizer_state, torch_param_groups
from clrctl.runs.rundir import RunDir, WriteFailed, failure_line
from clrctl.engine.setup import Setup, StageRun, build_stage

METRIC_COLUMNS = ["step", "epoch", "lr", "momentum", "loss", "val_loss", "val_acc"]
# A metrics row is a list in METRIC_COLUMNS order (+ the stage): cheaper per step than a dict.
STEP, LR, LOSS, VAL_LOSS, VAL_ACC = (METRIC_COLUMNS.index(c) for c in ("step", "lr", "loss", "val_loss", "val_acc"))
EPOCH_COLUMNS = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "elapsed_s"]


def log_columns(config) -> tuple[list[str], list[str]]:
    """The columns of metrics.csv and of epochs.csv (with a stage column when there are stages)."""
    extra = ["stage"] if config.has_stages else []
    return METRIC_COLUMNS + extra, EPOCH_COLUMNS + extra


class Reporter:
    """What the trainer tells its caller (the CLI renders it with rich). Silent by default."""

    def start(self, total_steps: int, done_steps: int) -> None: ...

    def advance(self, steps_done: int, lr: float) -> None: ...

    def metrics(self, steps_done: int, loss: Optional[float], val_acc: Optional[float]) -> None: ...

    def epoch(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------
# One step, one evaluation (shared with the range test)


def _forward_backward(model, optimizer, x, y, loss_fn, scaler=None, weight=None, dtype=None, skip_nonfinite=False):
    """``weight`` (DDP): the factor of :func:`clrctl.engine.ddp.loss_weight` on the loss
    that is backpropagated; the returned loss is this batch's own mean. ``dtype``: autocast
    to it (``train.precision``); an enabled ``scaler`` alone means float16.
    ``skip_nonfinite``: no optimizer step when the loss or a gradient is NaN/Inf (a host sync)."""
    optimizer.zero_grad(set_to_none=True)
    amp = scaler is not None and scaler.is_enabled()
    dtype = dtype or (torch.float16 if amp else None)
    if dtype is None:  # (entering even a disabled autocast costs ~2 µs a step)
        logits, loss, backprop = _forward(model, x, y, loss_fn, weight)
    else:
        with torch.autocast(x.device.type, dtype=dtype):
            logits, loss, backprop = _forward(model, x, y, loss_fn, weight)
    (scaler.scale(backprop) if amp else backprop).backward()
    if skip_nonfinite and not _finite(optimizer, None if weight is not None else loss):
        optimizer.zero_grad(set_to_none=True)
    elif amp:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach(), logits.detach()


def _forward(model, x, y, loss_fn, weight):
    logits = model(x)
    loss = loss_fn(logits, y)
    if weight is None:
        return logits, loss, loss
    # A rank with no share of a last, partial batch still joins DDP's gradient reduction.
    return logits, loss, (loss * weight if len(y) else logits.sum() * 0.0)


def _finite(optimizer, loss: Optional[torch.Tensor]) -> bool:
    """Whether every gradient (and ``loss``) is finite, in one host sync. Under DDP (``loss``
    None) the gradients alone decide: they are reduced, so every rank decides alike."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None and p.grad.numel()]
    # (a tensor's largest magnitude is NaN or Inf exactly when the tensor holds one)
    values = [g.detach().abs().amax().float() for g in grads] + ([loss.float()] if loss is not None else [])
    return bool(torch.isfinite(torch.stack(values)).all()) if values else True


def train_step(model, optimizer, x, y, loss_fn, scaler=None, weight=None, dtype=None) -> torch.Tensor:
    """One optimizer step; returns the batch loss as a device tensor (no host sync)."""
    return _forward_backward(model, optimizer, x, y, loss_fn, scaler, weight, dtype)[0]


class FastPath:
    """``train.precision``, ``train.channels_last`` and ``train.compile`` applied to a model
    (in place: its parameters stay the ones checkpoints save) and to each input batch."""

    def __init__(self, train_cfg, device: torch.device):
        name = train_cfg.autocast_dtype(device.type)
        self.dtype = getattr(torch, name) if name else None
        self.channels_last = train_cfg.channels_last
        self.compile = train_cfg.compile
        self.device = device

    def scaler(self) -> "torch.amp.GradScaler":
        """A GradScaler, enabled for float16 only (bf16 has fp32's range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype is torch.float16)

    def model_layout(self, model: nn.Module) -> nn.Module:
        """``model`` itself, in channels_last memory format when asked (before DDP wraps it)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def model(self, model: nn.Module) -> nn.Module:
        """The module to call for training steps: ``model``, compiled when asked (after DDP)."""
        return torch.compile(model) if self.compile else model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


@torch.no_grad()
def evaluate(model: nn.Module, source: BatchSource, loss_fn: nn.Module) -> tuple[float, float]:
    """(mean loss, accuracy) over ``source``; one host sync at the end."""
    was_training = model.training
    model.eval()
    loss_sum, correct, seen = None, None, 0
    for x, y in source.batches(0):
        logits = model(x)
        batch_loss = loss_fn(logits, y).float() * len(y)
        batch_correct = (logits.argmax(1) == y).sum() if not y.is_floating_point() else None  # regression: none
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        correct = batch_correct if correct is None or batch_correct is None else correct + batch_correct
        seen += len(y)
    model.train(was_training)
    if distributed.initialised():  # this rank's share of each batch: sums over all ranks
        zero = torch.zeros((), device=source.device)
        loss, hits, seen = distributed.reduce_eval(zero if loss_sum is None else loss_sum,
                                                   zero if correct is None else correct, seen, source.device)
        return loss / seen, None if correct is None else hits / seen
    return float(loss_sum) / seen, None if correct is None else float(correct) / seen


# ---------------------------------------------------------------------------------------
# The loop


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


class _Diverged(Exception):
    def __init__(self, step: int, lr: float, loss: float):
        super().__init__(step, lr, loss)
        self.step, self.lr, self.loss = step, lr, loss


class TrainingLoop:
    """Trains a :class:`Setup` stage after stage with one step counter; ``stage`` holds the
    running stage's optimizer and schedule, rebuilt when the next stage begins."""

    def __init__(self, setup: Setup, run: RunDir, reporter: Optional[Reporter] = None,
                 state: Optional[LoopState] = None):
        self.s = setup
        self.run = run
        self.reporter = reporter or Reporter()
        self.state = state or LoopState()
        self.stage: StageRun = build_stage(setup, setup.stage_index(self.state.step))
        device = setup.device
        self.fast = FastPath(setup.config.train, device)
        self.scaler = self.fast.scaler()  # (train.amp: float16 on CUDA, as train.precision: fp16)
        metric_columns, epoch_columns = log_columns(setup.config)
        self.metrics_log = run.csv("metrics.csv", metric_columns)
        self.epochs_log = run.csv("epochs.csv", epoch_columns)
        # Rows whose loss is still a device tensor, with each step's loss (a sum under DDP),
        # correct predictions (classification) and global batch size: read at the next flush.
        self._rows: list[list[Any]] = []
        self._evaluations_at_flush = self._evaluation_numbers()  # (what metrics.csv holds so far)
        self._losses: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._skip_nonfinite = setup.config.train.skip_nonfinite
        self._hits = _Hits(per_row=self._skip_nonfinite)
        self._stage_column = setup.config.has_stages
        self._signal: Optional[str] = None
        self._finishing = False  # the loop is over: signals are recorded, never raised
        self._t0 = time.perf_counter()
        self.tb = tensorboard.logger(setup, run)  # does nothing unless train.tensorboard (and on rank 0)
        # DDP: the model that trains (checkpoints hold setup.model, unwrapped), the global
        # batch sizes of the rows not yet flushed, and whether all ranks agreed to stop.
        self._ddp = distributed.initialised()
        self.net = self.fast.model(distributed.wrap(self.fast.model_layout(setup.model), device))
        self._stop_agreed = False
        # last.pt: at most every train.checkpoint_every seconds at epoch ends; best.pt: its
        # payload (a snapshot of the weights) kept until a checkpoint is written.
        self._saved_at = time.perf_counter()
        self._best: Optional[dict[str, Any]] = None
        self._writes = distributed.is_main()
        self._ends = setup.stage_ends  # (a property that sums the stages: once, not per step)

    # -- public ----------------------------------------------------------------------
    def run_all(self) -> dict[str, Any]:
        """Train to the end. Raises RunFailed (diverged, failed) or Interrupted; each leaves a
        summary, plots and a final status. The loop's signal handler stays in place until
        then: signals after the first that stops the run do not cut the finishing short."""
        s, state = self.s, self.state
        self.reporter.start(s.total_steps, state.step)
        s.model.train()
        with self._signals():
            try:
                # batch > 0: resumed inside an epoch (possibly its last step) that must be closed
                while state.step < s.total_steps or state.batch > 0:
                    self._run_epoch(state.epoch)
            except _Diverged as div:
                # The steps after the diverged one (up to the sync that saw it) trained on NaN
                # weights and are not in metrics.csv: the summary counts the steps logged.
                state.step = div.step + 1
                self._finish("diverged", diverged_at={"step": div.step, "lr": div.lr, "loss": div.loss})
                raise RunFailed(
                    f"loss became {div.loss} at step {div.step} (lr {div.lr:.4g}); the run is kept as 'diverged' "
                    "in " + str(self.run.path) + " — the LR is too high for this model: `clrctl range-test` finds bounds"
                ) from None
            except _Stop:
                self._finishing = True
                self._finish("interrupted", self._flush, self._checkpoint)
                raise self._interrupted()
            except KeyboardInterrupt:  # a second signal ("stop now"), or one raised mid-step: no
                # checkpoint of a step that may be half done; the last one resumes, rows after it redone
                self._finish("interrupted")
                raise self._interrupted()
            except (DataError, OSError, WriteFailed) as err:  # unreadable data, a full disk: exit 1
                self._finish_failed()
                raise self._failed(err) from err
            except BaseException:
                self._finish_failed()
                raise
            summary = self._finish("completed")
        if self._signal:  # a signal while the run was finishing: it is complete, and stops here
            raise Interrupted(f"interrupted as the run completed (its files are complete): {self.run.path}")
        return summary

    def _interrupted(self) -> Interrupted:
        return Interrupted(f"interrupted at step {self.state.step}; resume with: clrctl train --resume {self.run.path}")

    # -- epochs and steps ------------------------------------------------------------
    def _run_epoch(self, epoch: int) -> None:
        s, state = self.s, self.state
        n_batches = len(s.data.train)
        every, log_every = s.config.train.eval_every, s.config.train.log_every
        # A run resumed mid-epoch gets the same epoch's order, minus the batches it has done.
        for index, (x, y) in enumerate(s.data.train.batches(epoch, start=state.batch), start=state.batch):
            self._train_one(x, y, epoch)
            state.batch = index + 1
            epoch_end = index == n_batches - 1 or state.step >= self._ends[-1]
            stage_end = state.step == self._ends[self.stage.index]
            if epoch_end or stage_end or (every and state.step % every == 0):
                self._evaluate()
            if stage_end:
                state.stages.append({"name": self.stage.stage.name, "steps": self.stage.stage.length(s.steps_per_epoch),
                                     "final_val_acc": state.final_val_acc})
            if epoch_end or len(self._rows) >= log_every:  # (log_every steps since the last sync)
                self._flush()
            if self._stop_agreed if self._ddp else self._signal:
                self._finishing = True  # (set before the raise: no "stop now" in the last checkpoint)
                raise _Stop()
            if epoch_end:
                break
        self._end_epoch(epoch)

    def _train_one(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
        s, state = self.s, self.state
        if state.step >= self._ends[self.stage.index]:  # the previous stage is done
            self.stage = build_stage(s, self.stage.index + 1)
        optimizer, schedule = self.stage.optimizer, self.stage.schedule
        lr, momentum = schedule.lr(), schedule.momentum()
        weight = None
        if self._ddp:  # this rank's share of a global batch of `size` samples
            size = min(s.data.train.batch_size, s.data.train._end - state.batch * s.data.train.batch_size)
            weight = distributed.loss_weight(len(y), size)
        loss, logits = _forward_backward(self.net, optimizer, self.fast.inputs(x), y, s.loss_fn, self.scaler, weight,
                                         self.fast.dtype, self._skip_nonfinite)
        schedule.step()
        row = [state.step, epoch + 1, lr, momentum, None, None, None]
        if self._stage_column:
            row.append(self.stage.stage.name)
        self._rows.append(row)
        n = y.shape[0]  # (len(y) goes through Tensor.__len__: a microsecond a step)
        self._losses.append(loss * n if self._ddp else loss)
        if not y.is_floating_point():  # classification: train accuracy, counted at the flush
            self._hits.add(logits, y)
        self._sizes.append(size if self._ddp else n)
        state.step += 1
        state.last_lr = lr
        self.reporter.advance(state.step, lr)

    def _flush(self) -> None:
        """The one host sync of the loop: losses to floats, rows to metrics.csv, the epoch's
        train loss and accuracy sums brought up to date."""
        if not self._rows:
            return
        losses, hits = self._host_values()
        rows, sizes = self._rows, self._sizes
        self._rows, self._losses, self._sizes = [], [], []
        for i, (row, loss) in enumerate(zip(rows, losses)):
            row[LOSS] = loss
            if not math.isfinite(loss) and not self._skip_nonfinite:
                self._log_rows(rows[: i + 1])
                self._evaluations_as_logged(rows[: i + 1])
                raise _Diverged(row[STEP], row[LR], loss)
        self._log_rows(rows)
        self._evaluations_at_flush = self._evaluation_numbers()
        self._count_epoch(losses, hits, sizes)
        # The bar shows the epoch's running train loss (epochs.csv's train_loss at its end), not
        # the last batch's: that one may hold a few samples (digits: 3 of 32) and swings with them.
        state = self.state
        running = state.epoch_loss_sum / state.epoch_seen if state.epoch_seen else None
        self.reporter.metrics(state.step, running, state.final_val_acc)

    def _log_rows(self, rows: list[list[Any]]) -> None:
        self.metrics_log.write_lists(rows)
        self.metrics_log.flush()
        if self.tb.active:
            self.tb.rows([dict(zip(self.metrics_log.columns, row)) for row in rows])

    def _host_values(self) -> tuple[list[float], list[float]]:
        """Each row's loss (over its global batch) and correct predictions, in one transfer;
        under DDP one all-reduce of the sums, the stop flag riding along, so every rank
        gets the same numbers."""
        hits = self._hits.take()
        losses = self._losses if self._losses[0].dtype == torch.float32 else [v.float() for v in self._losses]
        local = torch.stack(losses + hits)  # one kernel, one transfer (tolist copies to the host)
        if not self._ddp:
            values = local.tolist()
            return values[: len(self._rows)], values[len(self._rows):]
        total, self._stop_agreed = distributed.reduce_flush(local, bool(self._signal))
        total = total.cpu().tolist()
        n = len(self._rows)
        return [value / size for value, size in zip(total[:n], self._sizes)], total[n:]

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
        s, state = self.s, self.state
        val_loss, val_acc = evaluate(s.model, s.data.val, s.loss_fn)
        self._rows[-1][VAL_LOSS], self._rows[-1][VAL_ACC] = val_loss, val_acc
        if self._record_evaluation(val_loss, val_acc, state.step) and self._writes:
            self._best = {"model": checkpoint.snapshot(s.model.state_dict()), "step": state.step, "val_acc": val_acc}

    def _record_evaluation(self, val_loss: float, val_acc: Optional[float], step: int) -> bool:
        """The summary's numbers after an evaluation at ``step``; True when it is the best yet."""
        state = self.state
        state.final_val_loss, state.final_val_acc = val_loss, val_acc
        best = val_acc is not None and (state.best_val_acc is None or val_acc > state.best_val_acc)
        if best:
            state.best_val_acc, state.best_step = val_acc, step
        target = self.s.config.train.target
        if target and state.steps_to_target is None:
            metric, threshold = next(iter(target.items()))
            value = val_acc if metric == "val_acc" else val_loss
            if value is not None and ((value >= threshold) if metric == "val_acc" else (value <= threshold)):
                state.steps_to_target = step
        return best

    def _evaluations_as_logged(self, logged: list[list[Any]]) -> None:
        """After a divergence: the evaluations after the diverged step (up to the sync that saw
        it) are not in metrics.csv, so the summary's numbers are rebuilt from those that are."""
        state = self.state
        (state.final_val_loss, state.final_val_acc, state.best_val_acc, state.best_step,
         state.steps_to_target) = self._evaluations_at_flush
        for row in logged:
            if row[VAL_LOSS] is not None:
                self._record_evaluation(row[VAL_LOSS], row[VAL_ACC], row[STEP] + 1)
        if self._best is not None and self._best["step"] != state.best_step:
            self._best = None  # the weights of a dropped evaluation

    def _evaluation_numbers(self) -> tuple:
        state = self.state
        return (state.final_val_loss, state.final_val_acc, state.best_val_acc, state.best_step,
                state.steps_to_target)

    def _end_epoch(self, epoch: int) -> None:
        s, state = self.s, self.state
        seen = max(state.epoch_seen, 1)
        row = {"epoch": epoch + 1, "step": state.step, "train_loss": state.epoch_loss_sum / seen,
               "train_acc": state.epoch_correct / seen if s.config.train.loss != "mse" else None,
               "val_loss": state.final_val_loss,
               "val_acc": state.final_val_acc, "lr": state.last_lr, "elapsed_s": round(self._elapsed(), 3),
               "stage": self.stage.stage.name}
        self.epochs_log.write([row])
        self.epochs_log.flush()
        state.epoch, state.batch = epoch + 1, 0
        state.epoch_loss_sum = state.epoch_correct = 0.0
        state.epoch_seen = 0
        self._checkpoint(force=state.step >= s.total_steps)
        self.reporter.epoch(row)

    # -- files -----------------------------------------------------------------------
    def _elapsed(self) -> float:
        return self.state.elapsed_s + time.perf_counter() - self._t0

    def _checkpoint(self, force: bool = True) -> None:
        """``last.pt``, and ``best.pt`` when a better model is waiting. Unless ``force``d (the
        run's end, an interrupt), at most every ``train.checkpoint_every`` seconds: a small
        model's epoch takes milliseconds, and a write each would cost it a tenth of its speed.
        Resuming is exact from any ``last.pt``; a killed run redoes the steps since the last."""
        if not force and time.perf_counter() - self._saved_at < self.s.config.train.checkpoint_every:
            return
        self._saved_at = time.perf_counter()
        self._save_best()
        s = self.s
        state = asdict(self.state)
        state["elapsed_s"] = self._elapsed()
        self.run.save_checkpoint({
            "model": s.model.state_dict(), "optimizer": self.stage.optimizer.state_dict(),
            "schedule": self.stage.schedule.state_dict(), "scaler": self.scaler.state_dict(),
            "stage": self.stage.index, "state": state, "rng": checkpoint.rng_state(),
        }, "last.pt")

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a ``last.pt``: the optimizer state counts only inside the stage that
        saved it — a run stopped exactly at a stage boundary starts the next stage afresh."""
        self.s.model.load_state_dict(saved["model"])
        self.scaler.load_state_dict(saved["scaler"])
        if saved.get("stage", 0) == self.stage.index:
            stage = self.stage.stage  # (the layout of checkpoints from before alike groups were merged)
            unmerged = torch_param_groups(self.s.groups, self.s.model, stage.optimizer, stage.freeze, merge=False)
            load_optimizer_state(self.stage.optimizer, saved["optimizer"], unmerged)
            self.stage.schedule.load_state_dict(saved["schedule"])
        checkpoint.restore_rng(saved["rng"])

    def _save_best(self) -> None:
        if self._best is not None:
            self.run.save_checkpoint(self._best, "best.pt", copy=False)
            self._best = None

    def _finish(self, status: str, *first: Callable[[], None], **extra: Any) -> dict[str, Any]:
        """The run's last files, then its status: ``first`` (the interrupted run's last rows
        and checkpoint), best.pt, the CSVs closed, summary.json, TensorBoard, the plots —
        each tried even when one before failed (a full disk) — and then run.json's status:
        ``status``, or ``failed`` when a file could not be written (that error is raised)."""
        self._finishing = True  # (the loop's handler only records signals from now on)
        problems: list[Exception] = []
        steps = [*first, self._save_best, *(log.close for log in (self.metrics_log, self.epochs_log))]
        for step in steps:
            _attempt(step, problems)
        summary = self.summary(status, **extra)
        _attempt(lambda: self.run.write_summary(summary), problems)
        _attempt(lambda: self.tb.close(summary), problems)
        if self._writes:  # diverged and interrupted runs get plots too
            _attempt(self._plots, problems)
        self.run.set_status("failed" if problems else status)
        self.reporter.close()
        if problems:
            raise self._failed(problems[0]) from problems[0]
        return summary

    def _finish_failed(self) -> None:
        """Finish a run that failed: the status is ``failed`` whatever else cannot be written,
        and the error that failed it is the one to report."""
        try:
            self._finish("failed")
        except Exception:  # noqa: BLE001 - (run.json says 'failed' all the same)
            pass

    def _failed(self, err: BaseException) -> BaseException:
        """The one-line error of a run that failed on ``err`` (a file it could not write, data
        it could not read); other errors as they are."""
        if isinstance(err, (DataError, OSError, RunFailed)):
            return RunFailed(f"{failure_line(err)} (the run is kept as 'failed' in {self.run.path})")
        return err

    def _plots(self) -> None:
        from clrctl.runs.training import render_plots  # (runs imports this module)

        render_plots(self.run.path, self.s.config, train_samples=self.s.data.train.num_samples)

    def summary(self, status: str, **extra: Any) -> dict[str, Any]:
        state, s = self.state, self.s
        return {
            "status": status, "steps": state.step, "epochs": round(state.step / s.steps_per_epoch, 4),
            "elapsed_s": round(self._elapsed(), 3), "final_val_acc": state.final_val_acc,
            "best_val_acc": state.best_val_acc, "best_step": state.best_step,
            "final_val_loss": state.final_val_loss, "steps_to_target": state.steps_to_target,
            "target": s.config.train.target, "planned_steps": s.total_steps,
            "steps_per_epoch": s.steps_per_epoch,
            **({"stages": state.stages} if s.config.has_stages else {}), **extra,
        }

    # -- signals ---------------------------------------------------------------------
    def _signals(self):
        """SIGINT/SIGTERM: finish the current step, then stop cleanly. A second one aborts the
        step — once: any signal after that, or once the run is finishing, is only recorded, so
        the summary, plots and status are always written (any number of signals: exit 130)."""

        def handler(signum, _frame):
            interrupts.stopping()  # and so after the loop, until the interrupt is reported
            if self._signal and not self._finishing:  # second signal: stop now
                self._finishing = True
                raise KeyboardInterrupt
            self._signal = self._signal or signal.Signals(signum).name

        return interrupts.handled_by(handler)


class _Hits:
    """The correct predictions behind train accuracy, counted in a few kernels: each step's
    (detached) logits and labels are held and counted together at the flush, instead of three
    small kernels a step (3% of a small model's step on CPU). ``per_row`` keeps one count a
    step (``train.skip_nonfinite`` must leave out the rows it skips)."""

    HELD_LIMIT = 1 << 24  # logit elements held at most (64 MB of float32) before counting early

    def __init__(self, per_row: bool):
        self.per_row = per_row
        self._held: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._held_numel = 0
        self._counts: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self._held.append((logits, y))
        self._held_numel += logits.numel()
        if self._held_numel > self.HELD_LIMIT:
            self._count()

    def take(self) -> list[torch.Tensor]:
        """The counts since the last take, as float32 scalars: one per row, or their sum (as
        many numbers on every DDP rank, whenever each counted early); none for a regression run."""
        self._count()
        counts, self._counts = self._counts, []
        if self.per_row or len(counts) <= 1:
            return counts
        return [torch.stack(counts).sum()]

    def _count(self) -> None:
        if not self._held:
            return
        if self.per_row:
            self._counts += [torch.eq(logits.argmax(1), y).sum(dtype=torch.float32) for logits, y in self._held]
        else:
            logits = torch.cat([logits for logits, _ in self._held])
            labels = torch.cat([y for _, y in self._held])
            self._counts.append(torch.eq(logits.argmax(1), labels).sum(dtype=torch.float32))
        self._held, self._held_numel = [], 0


def _attempt(step: Callable[[], None], problems: list[Exception]) -> None:
    """Run one step of a run's finishing; an error is noted and the next steps still run."""
    try:
        step()
    except Exception as err:  # noqa: BLE001 - raised by _finish once every step was tried
        problems.append(err)


class _Stop(Exception):
    """Raised inside the loop when a signal asked the run to stop."""
