"""The strategy seam: what differs between training in one process and under DDP.

The loop and the range test ask a :class:`Strategy` and contain no ``if ddp``:

- :meth:`~Strategy.wrap`: the module that trains (DDP wraps it; checkpoints keep the bare one);
- :meth:`~Strategy.stepper`: one training step over *this process's share* of a global batch,
  returning what the flush needs — the loss term to sum, the logits, the global batch size;
- :meth:`~Strategy.host_values`: the loop's one host sync — losses and hits as floats (summed
  over ranks under DDP) and whether the run stops (agreed by every rank);
- :attr:`~Strategy.eval_reduce`: validation sums over ranks;
- :attr:`~Strategy.writes`: whether this process writes the run directory and prints.

Lightning Fabric's ``Strategy`` (``lightning/fabric/strategies``) has the same cut: the loop
holds one object that knows the processes. A third strategy — several seeds' models trained
behind one step with ``torch.func`` (vectorised seed groups) — implements the same methods:
its stepper steps every model at once and its host values carry one row per model.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from clrctl.engine import ddp
from clrctl.engine.step import StepExtras, accumulated_step, forward_backward

# (loss term, logits, global batch size) of one step: what the loop keeps until its flush
StepResult = tuple[torch.Tensor, torch.Tensor, int]
Stepper = Callable[[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor, int], StepResult]


class Strategy:
    """One process: the model trains as it is, losses are this process's own, it writes."""

    writes = True
    distributed = False
    world_size = 1  # processes that step together
    # A signal stops the run after the step it arrived in (under DDP: at the next agreed sync).
    stops_at_once = True

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def stepper(self, loss_fn: nn.Module, fast, scaler, skip_nonfinite: bool, source,
                extras: Optional[StepExtras] = None) -> Stepper:
        """A function ``(net, optimizer, x, y, batch_index) -> (loss term, logits, batch size)``:
        one optimizer step on the batch ``x, y`` (the ``batch_index``-th of its epoch);
        ``extras``: gradient clipping and accumulation (None: neither, the plain step)."""
        dtype, inputs = fast.dtype, fast.inputs
        if extras is not None:
            def accumulate(net, optimizer, x, y, batch_index):
                n = y.shape[0]
                total, logits = accumulated_step(net, optimizer, inputs(x), y, loss_fn, extras, scaler, None, dtype,
                                                 skip_nonfinite)
                return total / n, logits, n

            return accumulate

        def step(net, optimizer, x, y, batch_index):
            loss, logits = forward_backward(net, optimizer, inputs(x), y, loss_fn, scaler, None, dtype, skip_nonfinite)
            return loss, logits, y.shape[0]  # (len(y) goes through Tensor.__len__: a microsecond a step)

        return step

    def host_values(self, local: torch.Tensor, rows: int, sizes: list[int],
                    stop: bool) -> tuple[list[float], list[float], bool]:
        """(each row's loss, the hit counts, whether to stop) from ``local``: the stacked loss
        terms of ``rows`` rows, then the hit counts. One transfer to the host."""
        values = local.tolist()
        return values[:rows], values[rows:], stop

    @property
    def eval_reduce(self) -> Optional[Callable[..., tuple[float, float, int]]]:
        """What :func:`~clrctl.engine.step.evaluate` calls to sum over processes (None: nothing)."""
        return None

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process (itself in one process)."""
        return obj


class DistributedStrategy(Strategy):
    """DistributedDataParallel over torchrun's processes (:mod:`clrctl.engine.ddp`): each rank
    steps on its contiguous share of every global batch, weighted so that DDP's average of
    gradients is the global batch's mean gradient; only rank 0 writes."""

    distributed = True
    stops_at_once = False

    def __init__(self, device: torch.device):
        self.device = device
        self.writes = ddp.is_main()
        self.world_size = ddp.world().world_size
        self._wrapped: Optional[nn.Module] = None

    def wrap(self, model: nn.Module) -> nn.Module:
        self._wrapped = ddp.wrap(model, self.device)
        return self._wrapped

    def stepper(self, loss_fn: nn.Module, fast, scaler, skip_nonfinite: bool, source,
                extras: Optional[StepExtras] = None) -> Stepper:
        dtype, inputs = fast.dtype, fast.inputs
        global_size = source.global_batch_size
        if extras is not None:
            world = self.world_size

            def accumulate(net, optimizer, x, y, batch_index):
                size = global_size(batch_index)
                no_sync = (self._wrapped or net).no_sync if extras.accumulate > 1 else None
                total, logits = accumulated_step(net, optimizer, inputs(x), y, loss_fn, extras, scaler, world / size,
                                                 dtype, skip_nonfinite, no_sync)
                return total, logits, size

            return accumulate

        def step(net, optimizer, x, y, batch_index):
            size, n = global_size(batch_index), y.shape[0]
            loss, logits = forward_backward(net, optimizer, inputs(x), y, loss_fn, scaler,
                                            ddp.loss_weight(n, size), dtype, skip_nonfinite)
            return loss * n, logits, size

        return step

    def host_values(self, local: torch.Tensor, rows: int, sizes: list[int],
                    stop: bool) -> tuple[list[float], list[float], bool]:
        """One all-reduce of the sums, the stop flag riding along: every rank gets the same
        numbers and stops at the same step (Lightning's ``should_stop`` broadcast)."""
        total, agreed = ddp.reduce_flush(local, stop)
        total = total.cpu().tolist()
        return [value / size for value, size in zip(total[:rows], sizes)], total[rows:], agreed

    @property
    def eval_reduce(self) -> Callable[..., tuple[float, float, int]]:
        return lambda loss_sum, correct, seen: ddp.reduce_eval(loss_sum, correct, seen, self.device)

    def broadcast(self, obj: Any) -> Any:
        return ddp.broadcast(obj)


class VectorizedStrategy(Strategy):
    """Several seeds' models stacked behind one step (``--vectorize``, :mod:`clrctl.engine.stack`):
    the stepper takes K batches at once (one per model, each in its own seed's order) and
    returns K losses and K logits; :meth:`host_values` gives one row of numbers per model.
    One process, which writes every seed's run directory."""

    def __init__(self, stack):
        self.stack = stack

    def stacked_stepper(self, loss_fn: nn.Module, clip: Optional[float] = None):
        """``(optimizer, xs, ys) -> (losses (K,), logits (K, B, C), batch size, norms or None)``:
        one optimizer step of every model of the stack; ``clip``: each model's own gradient
        norm clipped (``train.clip_grad_norm``), its pre-clip norm returned."""
        from clrctl.engine.stack import clip_per_model

        stack = self.stack
        forward = stack.forward_fn(loss_fn)

        def step(optimizer, xs, ys):
            optimizer.zero_grad(set_to_none=True)
            losses, logits = forward(stack.params(), stack.buffers, xs, ys)
            losses.sum().backward()  # (each model's gradient is its own mean loss's)
            norms = None
            if clip is not None:
                norms = clip_per_model([p for g in optimizer.param_groups for p in g["params"]], clip)
            optimizer.step()
            return losses.detach(), logits.detach(), ys.shape[1], norms

        return step

    def host_values(self, local: torch.Tensor, rows: int, sizes: list[int],
                    stop: bool) -> tuple[list[list[float]], list[float], bool]:
        """``local``: the (rows, K) losses, then K hit counts (one per model), then (rows, K)
        gradient norms or nothing: each model's column of losses, the hits, the norms."""
        k = self.stack.size
        values = local.tolist()
        losses = [values[i * k:(i + 1) * k] for i in range(rows)]
        return losses, values[rows * k:], stop


def for_process(device: torch.device) -> Strategy:
    """The strategy of this process: DDP under torchrun (once the process group is joined)."""
    return DistributedStrategy(device) if ddp.initialised() else Strategy()
