"""``clrctl range-test CONFIG --seeds N --vectorize``: the seeds' sweeps as one stacked model.

The same sweep as :func:`clrctl.rangetest.sweep.sweep` for each seed — its own initialisation
and data order, the LR common to all, one host sync a step (the stop rule needs each loss) —
but one optimizer step of the stack (:mod:`clrctl.engine.stack`) a step. A seed whose stop rule
fires (its loss diverged or became non-finite) leaves the stack; the others sweep on. The
files are the sequential sweep's: ``seeds/seed-K/metrics.csv`` and ``summary.json`` per seed,
the medians in the run's ``summary.json`` and ``suggested.yaml``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Callable, Optional

import torch

from clrctl.data.sources import StackedBatches
from clrctl.engine.stack import ModelStack, evaluate_stack
from clrctl.engine.step import evaluate
from clrctl.engine.strategy import VectorizedStrategy
from clrctl.optim.optimizers import current_momentum
from clrctl.optim.policies import lr_at
from clrctl.track.reporter import Reporter

FLUSH_EVERY = 25


def sweep_stacked(setups: list, on_rows: list[Callable[[dict[str, Any]], None]],
                  reporters: list[Optional[Reporter]]):
    """One sweep per setup (SweepSetups of the same config, one per seed), stacked; a
    :class:`~clrctl.rangetest.sweep.SweepResult` per seed."""
    from clrctl.rangetest.sweep import SweepResult, _sigterm_as_interrupt, _StopRule, sweep_optimizer

    first = setups[0]
    rt, steps = first.config.range_test, first.steps
    k_all = len(setups)
    models = [copy.deepcopy(s.model).train() for s in setups]
    stack = ModelStack(models)
    optimizer = sweep_optimizer(dataclasses.replace(first, model=stack.holder), stack.holder)
    step = VectorizedStrategy(stack).stacked_stepper(first.loss_fn, first.config.train.clip_grad_norm)
    evals = [s.data.val.head(rt.eval_size) if s.data.val is not None else None for s in setups]
    batches = StackedBatches([s.data.train for s in setups])
    reporters = [r or Reporter() for r in reporters]
    active = list(range(k_all))  # the seeds still in the stack, in its order
    rows: list[list[dict[str, Any]]] = [[] for _ in setups]
    stoppers = [_StopRule(rt.smoothing, rt.diverge_factor) for _ in setups]
    reasons: list[Optional[str]] = [None] * k_all
    t0 = time.perf_counter()
    for reporter in reporters:
        reporter.start(steps, 0)
    devices = [first.device] if first.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), _sigterm_as_interrupt():
        try:
            t, epoch = 0, 0
            while t < steps and active:
                for xs, ys in batches.batches(epoch):
                    if t >= steps or not active:
                        break
                    lr = lr_at(t, steps, rt.start_lr, rt.end_lr, rt.mode)
                    for group in optimizer.param_groups:
                        group["lr"] = lr * group["lr_mult"]
                    losses, _, _, _ = step(optimizer, xs, ys)
                    values = losses.float().tolist()  # (one host sync a step, as the sweep alone)
                    momentum = current_momentum(optimizer)
                    due = t % rt.eval_every == 0 or t == steps - 1
                    evaluated: Optional[list] = None
                    leaving = []
                    for pos, k in enumerate(active):
                        loss = values[pos]
                        row = {"step": t, "epoch": epoch + 1, "lr": lr, "momentum": momentum, "loss": loss}
                        row["smoothed_loss"], reason = stoppers[k].update(loss)
                        if row["smoothed_loss"] is not None and due and evals[k] is not None:
                            if evaluated is None:
                                evaluated = _evaluate(stack, [evals[j] for j in active], first.loss_fn)
                            row["val_loss"], row["val_acc"] = evaluated[pos]
                        rows[k].append(row)
                        on_rows[k](row)
                        reporters[k].advance(t + 1, lr)
                        if "val_acc" in row or (t + 1) % FLUSH_EVERY == 0 or reason:
                            shown = loss if row["smoothed_loss"] is None else row["smoothed_loss"]
                            reporters[k].metrics(t + 1, shown, row.get("val_acc"))
                        if reason:
                            reasons[k] = reason
                            leaving.append(pos)
                    for pos in reversed(leaving):  # its sweep is over: out of the stack
                        stack.remove(pos, optimizer)
                        batches.remove(pos)
                        del active[pos]
                    t += 1
                epoch += 1
        except KeyboardInterrupt:
            for k in active:
                reasons[k] = "interrupted"
        finally:
            for reporter in reporters:
                reporter.close()
    elapsed = round(time.perf_counter() - t0, 3)
    return [SweepResult(rows[k], len(rows[k]), steps, reasons[k] is not None, reasons[k],
                        rows[k][-1]["lr"] if reasons[k] and rows[k] else None, elapsed) for k in range(k_all)]


def _evaluate(stack: ModelStack, sources: list, loss_fn) -> list[tuple[float, Optional[float]]]:
    stack.copy_out()
    together = evaluate_stack(stack, sources)
    if together is not None:
        return together
    return [evaluate(model, source, loss_fn) for model, source in zip(stack.models, sources)]
