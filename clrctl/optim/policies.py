"""LR policies, stepped once per optimizer step, built on ``torch.optim.lr_scheduler``.

Step convention (PyTorch's): building the schedule writes f(0) into the optimizer; the loop
is ``log lr; optimizer.step(); schedule.step()``, so optimizer step t trains at f(t).

| policy       | torch class (parameters)                                                     |
| fixed        | LambdaLR(1)                       — constant bounds[0] (or lr)              |
| triangular   | CyclicLR(mode="triangular")       — Smith, arXiv 1506.01186 §3.1            |
| triangular2  | CyclicLR(mode="triangular2")      — amplitude halved each cycle             |
| exp_range    | CyclicLR(mode="exp_range", gamma) — amplitude x gamma^t                     |
| one_cycle    | OneCycleLR(max_lr, div_factor=max/base, final_div_factor) — arXiv 1803.09820 |
| cosine       | CosineAnnealingLR(T_max=run length, eta_min=base), starting at max          |
| sgdr         | CosineAnnealingWarmRestarts(T_0=stepsize, T_mult, eta_min=base) — 1608.03983 |
| step         | MultiStepLR(milestones, gamma), starting at lr (or max)                      |
| linear       | LinearLR(1 -> base/max over the run), starting at max — Budgeted Training    |
| wsd          | LambdaLR(:func:`wsd_lr`): max, then decay to base — MiniCPM 2404.06395,      |
|              | Hägele et al. 2405.18392 (decay_shape linear | sqrt | cosine)              |

Momentum is cycled inversely to the LR only when asked for (``policy.momentum``), and by
default for one_cycle when the optimizer has a momentum term — never switched on silently
(torch's CyclicLR does that by default; we pass ``cycle_momentum`` explicitly).

``policy.warmup`` (any policy, :class:`Warmup`): W steps of LambdaLR's linear ramp from
``warmup_start x f(0)`` to ``f(0)`` (torch's LinearLR, which refuses a start of 0), then
the policy's own torch class built over the remaining ``total - W`` steps, from its step 0.
A cycled momentum stays at the policy's first momentum during the ramp.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch.optim import lr_scheduler

from clrctl.config.schema import CYCLIC_POLICIES, ONE_CYCLE_MOMENTUM, OptimizerConfig, PolicyConfig, resolve_steps
from clrctl.optim.optimizers import build_optimizer, current_momentum, has_momentum, reference_config


def initial_lr(policy: PolicyConfig) -> float:
    """The LR the optimizer is built with (torch schedulers derive their base from it)."""
    if policy.name == "fixed":
        return policy.lr if policy.lr is not None else policy.base_lr
    if policy.name == "step":
        return policy.lr if policy.lr is not None else policy.max_lr
    if policy.name in ("cosine", "sgdr", "one_cycle", "linear", "wsd"):
        return policy.max_lr
    return policy.base_lr


def momentum_range(policy: PolicyConfig, optimizer_cfg: OptimizerConfig) -> Optional[tuple[float, float]]:
    """(low, high) momentum to cycle, or None to leave the optimizer's momentum alone."""
    if policy.momentum is not None:
        return policy.momentum
    if policy.name == "one_cycle" and has_momentum(optimizer_cfg):
        return ONE_CYCLE_MOMENTUM
    return None


def wsd_lr(step: int, total_steps: int, base: float, top: float, decay: float, shape: str) -> float:
    """Warmup-stable-decay without the warmup: ``top`` until the last ``decay`` share of the run
    (rounded to whole steps, at least one), then down to ``base`` along ``shape`` of the
    decay's progress p in [0, 1): linear 1 - p, sqrt 1 - sqrt(p) (Hägele et al.'s 1-sqrt
    cooldown), cosine (1 + cos(pi p)) / 2. Like cosine, the run ends one step short of base."""
    decay_steps = max(1, round(decay * total_steps))
    start = total_steps - decay_steps
    if step < start:
        return top
    progress = min(1.0, (step - start) / decay_steps)
    remaining = {"linear": 1.0 - progress, "sqrt": 1.0 - math.sqrt(progress),
                 "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}[shape]
    return base + (top - base) * remaining


class Schedule:
    """The policy's trace, applied to every parameter group as ``lr_mult x LR``.

    The torch scheduler runs on a one-parameter *reference* optimizer whose LR is the policy's
    LR (lr_mult 1); each step writes ``lr_mult_g x`` that LR, and the momentum, into the real
    optimizer's groups (timm's ``lr_scale``). So group g follows the policy for the bounds
    ``lr_mult_g x bounds`` for every policy — including cosine and SGDR, whose torch classes
    take a single ``eta_min`` — and a group with lr_mult 1 gets torch's values bit for bit.

    For policies torch cycles no momentum for, the momentum follows the inverse LR->momentum
    coupling of CyclicLR: m = high - (high - low) * (lr - base) / (max - base).
    """

    def __init__(self, scheduler: lr_scheduler.LRScheduler, reference: torch.optim.Optimizer,
                 inverse_momentum: Optional[tuple[float, float, float, float]] = None,
                 target: Optional[torch.optim.Optimizer] = None):
        self.scheduler, self.reference = scheduler, reference
        self.inverse_momentum = inverse_momentum  # low, high, base, max
        self.cycles_momentum = inverse_momentum is not None or getattr(scheduler, "cycle_momentum", False)
        self.target = target
        self._couple_momentum()
        self.apply()

    def step(self) -> None:
        # What reference.step() would tell the scheduler (that the optimizer stepped first, so
        # torch does not warn) without running an optimizer step on a parameter with no grad.
        self.reference._opt_called = True  # type: ignore[attr-defined]
        self.scheduler.step()
        if self.inverse_momentum is not None:
            self._couple_momentum()
        if self.target is not None:
            self.apply()

    def lr(self) -> float:
        """The policy's LR (lr_mult 1): what metrics.csv records."""
        return float(self.reference.param_groups[0]["lr"])

    def momentum(self) -> Optional[float]:
        return current_momentum(self.reference if self.target is None else self.target)

    def apply(self) -> None:
        """Write the reference LR (and a cycled momentum) into the real optimizer's groups."""
        if self.target is not None:
            _write(self.target, self.lr(), self.reference.param_groups[0] if self.cycles_momentum else None)

    def state_dict(self) -> dict[str, Any]:
        hyper = {k: v for k, v in self.reference.param_groups[0].items() if k != "params"}
        return {"scheduler": self.scheduler.state_dict(), "reference": hyper}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "scheduler" not in state:  # a checkpoint from clrctl 0.1: the scheduler alone
            state = {"scheduler": state, "reference": {"lr": self.target.param_groups[0]["lr"]}}
        self.scheduler.load_state_dict(state["scheduler"])
        self.reference.param_groups[0].update(state["reference"])
        self._couple_momentum()
        self.apply()

    def _couple_momentum(self) -> None:
        if self.inverse_momentum is None:
            return
        low, high, base, top = self.inverse_momentum
        group = self.reference.param_groups[0]
        share = min(1.0, max(0.0, (group["lr"] - base) / (top - base)))
        value = high - (high - low) * share
        if "betas" in group:
            group["betas"] = (value, group["betas"][1])
        else:
            group["momentum"] = value


def _write(target: torch.optim.Optimizer, lr: float, momentum_group: Optional[dict[str, Any]]) -> None:
    """``lr_mult x lr`` into each of ``target``'s groups, and the momentum of ``momentum_group``
    (a reference optimizer's group; None: leave the momentum alone)."""
    for group in target.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
        if momentum_group is not None:
            if "betas" in group:
                group["betas"] = (momentum_group["betas"][0], group["betas"][1])
            elif "momentum" in group:
                group["momentum"] = momentum_group["momentum"]


class Warmup:
    """``policy.warmup``: ``ramp`` (a :class:`Schedule` of W steps) then ``policy`` (the
    policy's :class:`Schedule`, built over the remaining steps, not stepped during the ramp).

    Both run on reference optimizers and this writes into ``target``, as :class:`Schedule`
    does. Its state is the step count and each part's own state: nothing of torch's
    ``SequentialLR`` (whose ``load_state_dict`` restores the wrong LR) is involved."""

    def __init__(self, ramp: Schedule, policy: Schedule, steps: int, target: Optional[torch.optim.Optimizer]):
        self.ramp, self.policy, self.steps, self.target = ramp, policy, steps, target
        self.cycles_momentum = policy.cycles_momentum
        self.done = 0  # optimizer steps taken
        self.apply()

    def _active(self) -> Schedule:
        return self.ramp if self.done < self.steps else self.policy

    def step(self) -> None:
        self._active().step()
        self.done += 1
        if self.target is not None:
            self.apply()

    def lr(self) -> float:
        return self._active().lr()

    def momentum(self) -> Optional[float]:
        return current_momentum(self.policy.reference if self.target is None else self.target)

    def apply(self) -> None:
        if self.target is not None:
            _write(self.target, self.lr(), self.policy.reference.param_groups[0] if self.cycles_momentum else None)

    def state_dict(self) -> dict[str, Any]:
        return {"warmup_done": self.done, "ramp": self.ramp.state_dict(), "policy": self.policy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = int(state["warmup_done"])
        self.ramp.load_state_dict(state["ramp"])
        self.policy.load_state_dict(state["policy"])
        self.apply()


def warmup_steps(policy: PolicyConfig, steps_per_epoch: int) -> int:
    """``policy.warmup`` in steps (0: none)."""
    return 0 if policy.warmup is None else resolve_steps(policy.warmup, steps_per_epoch)


def build_schedule(policy: PolicyConfig, optimizer_cfg: OptimizerConfig, target: Optional[torch.optim.Optimizer],
                   steps_per_epoch: int, total_steps: int) -> Schedule | Warmup:
    """The schedule for ``policy`` over ``total_steps``, driving ``target``'s groups (None: a
    trace only, as for ``preview``); with ``policy.warmup``, a :class:`Warmup` first."""
    warmup = warmup_steps(policy, steps_per_epoch)
    if not warmup:
        return _policy_schedule(policy, optimizer_cfg, target, steps_per_epoch, total_steps)
    main = _policy_schedule(policy, optimizer_cfg, None, steps_per_epoch, total_steps - warmup)
    optimizer = build_optimizer(reference_config(optimizer_cfg), [torch.nn.Parameter(torch.zeros(1))], main.lr())
    start = policy.warmup_start
    ramp = lr_scheduler.LambdaLR(optimizer, lambda t: start + (1.0 - start) * min(t, warmup) / warmup)
    return Warmup(Schedule(ramp, optimizer), main, warmup, target)


def _policy_schedule(policy: PolicyConfig, optimizer_cfg: OptimizerConfig, target: Optional[torch.optim.Optimizer],
                     steps_per_epoch: int, total_steps: int) -> Schedule:
    optimizer = build_optimizer(reference_config(optimizer_cfg), [torch.nn.Parameter(torch.zeros(1))],
                                initial_lr(policy))
    moms = momentum_range(policy, optimizer_cfg)
    stepsize = resolve_steps(policy.stepsize, steps_per_epoch)
    name = policy.name
    if name in CYCLIC_POLICIES:
        kwargs = dict(base_momentum=moms[0], max_momentum=moms[1]) if moms else {}
        sched = lr_scheduler.CyclicLR(optimizer, base_lr=policy.base_lr, max_lr=policy.max_lr,
                                      step_size_up=stepsize, mode=name, gamma=policy.effective_gamma,
                                      cycle_momentum=moms is not None, **kwargs)
        return Schedule(sched, optimizer, target=target)
    if name == "one_cycle":
        kwargs = dict(base_momentum=moms[0], max_momentum=moms[1]) if moms else {}
        sched = lr_scheduler.OneCycleLR(optimizer, max_lr=policy.max_lr, total_steps=total_steps,
                                        pct_start=policy.pct_start, anneal_strategy=policy.anneal,
                                        div_factor=policy.max_lr / policy.base_lr,
                                        final_div_factor=policy.final_div, three_phase=policy.three_phase,
                                        cycle_momentum=moms is not None, **kwargs)
        return Schedule(sched, optimizer, target=target)
    if name == "cosine":
        sched = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=policy.base_lr)
    elif name == "sgdr":
        sched = lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=stepsize, T_mult=policy.t_mult,
                                                         eta_min=policy.base_lr)
    elif name == "linear":  # from max_lr at step 0 to base_lr after the last step
        sched = lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=policy.base_lr / policy.max_lr,
                                      total_iters=total_steps)
    elif name == "wsd":  # a pure function of the step (LambdaLR multiplies the initial LR, max_lr)
        base, top, decay, shape = policy.base_lr, policy.max_lr, policy.wsd_decay, policy.wsd_decay_shape
        sched = lr_scheduler.LambdaLR(optimizer, lambda t: wsd_lr(t, total_steps, base, top, decay, shape) / top)
    elif name == "step":
        milestones = sorted(resolve_steps(m, steps_per_epoch) for m in policy.milestones)
        sched = lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=policy.effective_gamma)
    else:  # fixed
        sched = lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    coupling = (moms[0], moms[1], policy.base_lr, policy.max_lr) if moms else None
    return Schedule(sched, optimizer, coupling, target)


def cycle_ends(policy: PolicyConfig, steps_per_epoch: int, length: int) -> Optional[list[int]]:
    """The step counts, from the start of a run (or stage) of ``length`` steps, after which a
    cycle of ``policy`` ends; None for a policy without cycles. The weights after such a
    count are those at the cycle's LR minimum: triangular, triangular2 and exp_range every
    2 x stepsize steps (CyclicLR is back at base_lr there); sgdr just before each restart
    (T_0, then each period T_mult times the last). Only whole cycles count: a run that ends
    inside its first cycle has none (an empty list). With ``policy.warmup`` the cycles begin
    after the ramp (the policy runs over the remaining steps)."""
    warm = resolve_steps(policy.warmup, steps_per_epoch) if policy.warmup is not None else 0
    stepsize, length = resolve_steps(policy.stepsize, steps_per_epoch), length - warm
    if policy.name in CYCLIC_POLICIES:
        return [warm + end for end in range(2 * stepsize, length + 1, 2 * stepsize)]
    if policy.name == "sgdr":
        ends, period, end = [], stepsize, stepsize
        while end <= length:
            ends.append(warm + end)
            period *= policy.t_mult
            end += period
        return ends
    return None


def preview(policy: PolicyConfig, optimizer_cfg: OptimizerConfig, steps_per_epoch: int,
            total_steps: int) -> list[tuple[int, float, Optional[float]]]:
    """(step, lr, momentum) for every step of a run — the trainer's own schedule, so what the
    preview shows is what training does. Group g trains at ``lr_mult_g x lr``."""
    schedule = build_schedule(policy, optimizer_cfg, None, steps_per_epoch, total_steps)
    trace = []
    for step in range(total_steps):
        trace.append((step, schedule.lr(), schedule.momentum()))
        schedule.step()
    return trace


# The LR range test's sweep (Smith §3.3: linear; fastai / torch-lr-finder: exponential)


def lr_at(step: int, steps: int, start: float, end: float, mode: str) -> float:
    """LR of step ``step`` of ``steps``: ``start`` at 0, ``end`` at ``steps - 1``."""
    frac = step / max(steps - 1, 1)
    return start + frac * (end - start) if mode == "linear" else start * (end / start) ** frac
