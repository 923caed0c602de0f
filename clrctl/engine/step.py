"""One training step and one evaluation: what the loop and the range test run on the device.

Nothing here syncs with the host except where a docstring says so: losses stay device tensors
until the loop's periodic flush. What differs between one process and several (the loss
weight of a rank's share, the reduction of validation sums) comes in as arguments from the
strategy (:mod:`clrctl.engine.strategy`).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import nn

from clrctl.data.sources import BatchSource


def forward_backward(model, optimizer, x, y, loss_fn, scaler=None, weight=None, dtype=None, skip_nonfinite=False):
    """One optimizer step: (the batch's mean loss, the logits), both detached device tensors.
    ``weight`` (DDP): the factor of :func:`clrctl.engine.ddp.loss_weight` on the loss
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
    _optimizer_step(optimizer, scaler if amp else None, skip_nonfinite, None if weight is not None else loss)
    return loss.detach(), logits.detach()


def _optimizer_step(optimizer, scaler, skip_nonfinite: bool, loss: Optional[torch.Tensor]) -> None:
    """The optimizer step after backward: through the GradScaler under float16 (``scaler``),
    skipped (gradients dropped) when ``skip_nonfinite`` and a gradient or ``loss`` is NaN/Inf."""
    if skip_nonfinite and not _finite(optimizer, loss):
        optimizer.zero_grad(set_to_none=True)
    elif scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


class StepExtras:
    """``train.clip_grad_norm`` and ``train.accumulate``: what a step does beyond
    :func:`forward_backward` (which stays the step when neither is on). ``norms`` (None: not
    kept) receives each step's pre-clip total gradient norm, a device tensor read at the flush."""

    def __init__(self, clip: Optional[float] = None, accumulate: int = 1, keep_norms: bool = False):
        self.clip, self.accumulate = clip, accumulate
        self.norms: Optional[list[torch.Tensor]] = [] if keep_norms and clip is not None else None

    @classmethod
    def of(cls, train_cfg, keep_norms: bool = False) -> Optional["StepExtras"]:
        """The extras of ``train_cfg`` (a TrainConfig), or None when neither is on."""
        if train_cfg.clip_grad_norm is None and train_cfg.accumulate == 1:
            return None
        return cls(train_cfg.clip_grad_norm, train_cfg.accumulate, keep_norms)


def accumulated_step(model, optimizer, x, y, loss_fn, extras: StepExtras, scaler=None, per_sample=None, dtype=None,
                     skip_nonfinite=False, no_sync=None):
    """One optimizer step over ``extras.accumulate`` micro-batches (contiguous slices of ``x, y``),
    the gradients clipped to ``extras.clip`` before it: (the sum of the batch's per-sample
    losses, the logits), detached device tensors.

    Each micro-batch's mean loss is weighted by its share, ``n_k x per_sample`` (one process:
    1 / n; DDP: world / global batch, :func:`clrctl.engine.ddp.loss_weight`), so the gradient
    is the whole batch's mean-loss gradient, a last partial batch included. ``no_sync`` (DDP's
    ``model.no_sync``): gradients are reduced once, on the last micro-batch; every rank runs
    that one, even with nothing in it. Under fp16 the gradients are unscaled before clipping."""
    optimizer.zero_grad(set_to_none=True)
    amp = scaler is not None and scaler.is_enabled()
    dtype = dtype or (torch.float16 if amp else None)
    parts = extras.accumulate
    n = y.shape[0]
    scale = per_sample if per_sample is not None else 1.0 / max(n, 1)
    xs, ys = (x.tensor_split(parts), y.tensor_split(parts)) if parts > 1 else ((x,), (y,))
    total, outputs = None, []
    for k in range(parts):
        xk, yk = xs[k], ys[k]
        nk, last = yk.shape[0], k == parts - 1
        if not nk and (no_sync is None or not last):
            continue  # nothing to learn from (a last, partial batch shorter than accumulate)
        with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
            if dtype is None:
                logits = model(xk)
                loss = loss_fn(logits, yk)
            else:
                with torch.autocast(xk.device.type, dtype=dtype):
                    logits = model(xk)
                    loss = loss_fn(logits, yk)
            backprop = loss * (nk * scale) if nk else logits.sum() * 0.0
            (scaler.scale(backprop) if amp else backprop).backward()
        outputs.append(logits.detach())
        if nk:
            term = loss.detach().float() * nk
            total = term if total is None else total + term
    if extras.clip is not None:
        if amp:
            scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, extras.clip, foreach=True)
        if extras.norms is not None:
            extras.norms.append(norm)
    if total is None:
        total = torch.zeros((), device=y.device)
    _optimizer_step(optimizer, scaler if amp else None, skip_nonfinite, None if per_sample is not None else total)
    return total, outputs[0] if len(outputs) == 1 else torch.cat(outputs)


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
    return forward_backward(model, optimizer, x, y, loss_fn, scaler, weight, dtype)[0]


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
def evaluate(model: nn.Module, source: BatchSource, loss_fn: nn.Module,
             reduce: Optional[Callable[..., tuple[float, float, int]]] = None,
             hflip: bool = False) -> tuple[float, float]:
    """(mean loss, accuracy) over ``source``; one host sync at the end. ``reduce`` (the
    strategy's :meth:`~clrctl.engine.strategy.Strategy.reduce_eval`, None in one process)
    sums (loss, correct, seen) over the processes that each evaluated a share. ``hflip``
    (``train.tta: hflip``): each image's logits are the mean of its own and its mirror
    image's (the last axis of (N, C, H, W) reversed), as fastai's TTA averages them."""
    was_training = model.training
    model.eval()
    loss_sum, correct, seen = None, None, 0
    for x, y in source.batches(0):
        logits = (model(x) + model(x.flip(-1))) / 2 if hflip else model(x)
        batch_loss = loss_fn(logits, y).float() * len(y)
        batch_correct = (logits.argmax(1) == y).sum() if not y.is_floating_point() else None  # regression: none
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        correct = batch_correct if correct is None or batch_correct is None else correct + batch_correct
        seen += len(y)
    model.train(was_training)
    if reduce is not None:  # this rank's share of each batch: sums over all ranks
        zero = torch.zeros((), device=source.device)
        loss, hits, seen = reduce(zero if loss_sum is None else loss_sum, zero if correct is None else correct, seen)
        return loss / seen, None if correct is None else hits / seen
    return float(loss_sum) / seen, None if correct is None else float(correct) / seen



class Hits:
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
