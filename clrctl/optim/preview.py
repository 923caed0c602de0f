"""Preview maths: a config's LR and momentum at every step, without training.

What ``clrctl preview`` (and ``validate``) shows is computed here and rendered by
:mod:`clrctl.commands.train`. The policy trace is the trainer's own schedule
(:func:`clrctl.optim.policies.preview`), so a preview is what training applies; the range
test's sweep is :func:`clrctl.rangetest.sweep.lr_at`. Stages share one step counter, as in
``metrics.csv``.

Importing this module costs no torch: the schedule, the sweep and the data set are imported
when a trace or a measured epoch length is asked for (``clrctl --help`` imports the commands).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from clrctl.config.schema import CYCLIC_POLICIES, Config, Stage, check_warmup_fit, resolve_steps
from clrctl.errors import ClrctlError, ConfigError

# (step, lr, momentum) for every step; momentum is None for an optimizer without one.
Trace = list[tuple[int, float, Optional[float]]]


@dataclass(frozen=True)
class Preview:
    """A schedule to show: the trace, each step's stage and each parameter group's LR.

    ``stages`` holds one stage name per step (None for every step of a range test's sweep);
    ``groups`` maps a group to its LR per step (NaN where its stage freezes it), and is empty
    when every group trains at the policy's own LR or for a sweep."""

    trace: Trace
    stages: list[Optional[str]]
    groups: dict[str, list[float]]


def build_preview(cfg: Config, steps_per_epoch: Optional[int], sweep: bool) -> Preview:
    """The range test's sweep (``sweep``) or the training policy of ``cfg``, at every step.

    ``steps_per_epoch`` None: no duration is in epochs, so any value gives the same schedule."""
    if sweep:
        trace = sweep_trace(cfg, steps_per_epoch)
        return Preview(trace, [None] * len(trace), {})
    check_warmup_fit(cfg.plan(), steps_per_epoch or 1, cfg.has_stages)
    trace = policy_trace(cfg, steps_per_epoch)
    stages: list[Optional[str]] = [name for _, name in stage_steps(cfg, steps_per_epoch)]
    return Preview(trace, stages, group_columns(cfg, [lr for _, lr, _ in trace], stages))


def stage_length(stage: Stage, steps_per_epoch: Optional[int]) -> int:
    """A stage's length in steps (an epoch of 1 step when the epoch length is not needed)."""
    return stage.length(steps_per_epoch or 1)


def stage_steps(cfg: Config, steps_per_epoch: Optional[int]) -> list[tuple[int, str]]:
    """(global step, stage name) for every step of the run: one step counter for all stages."""
    out: list[tuple[int, str]] = []
    for stage in cfg.plan():
        out.extend((len(out) + t, stage.name) for t in range(stage_length(stage, steps_per_epoch)))
    return out


def policy_trace(cfg: Config, steps_per_epoch: Optional[int]) -> Trace:
    """(step, lr, momentum) of training: each stage runs its own policy from its own start."""
    from clrctl.optim.policies import preview as trace_policy

    spe = steps_per_epoch or 1
    trace: Trace = []
    for stage in cfg.plan():
        for _, lr, momentum in trace_policy(stage.policy, stage.optimizer, spe, stage.length(spe)):
            trace.append((len(trace), lr, momentum))
    return trace


def sweep_steps(cfg: Config, steps_per_epoch: Optional[int]) -> int:
    """The range test's length in steps (``range_test.steps``)."""
    return resolve_steps(cfg.range_test.steps, steps_per_epoch or 1)


def sweep_trace(cfg: Config, steps_per_epoch: Optional[int]) -> Trace:
    """(step, lr, momentum) of the range test: the LR of ``range_test.lr_at``, constant momentum
    (Adam's beta1 for adam and adamw)."""
    from clrctl.optim.policies import lr_at

    rt, opt = cfg.range_test, cfg.optimizer
    steps = sweep_steps(cfg, steps_per_epoch)
    momentum = opt.betas[0] if opt.name in ("adam", "adamw") else opt.momentum
    return [(t, lr_at(t, steps, rt.start_lr, rt.end_lr, rt.mode), momentum) for t in range(steps)]


def stepsize_steps(policy: Any, steps_per_epoch: Optional[int]) -> Optional[int]:
    """The half-cycle of a cyclic policy or sgdr's T_0, in steps; None for other policies."""
    if policy.name not in (*CYCLIC_POLICIES, "sgdr"):
        return None
    return resolve_steps(policy.stepsize, steps_per_epoch or 1)


def group_columns(cfg: Config, lr: list[float], stages: list[Optional[str]]) -> dict[str, list[float]]:
    """Each configured group's LR (lr_mult x the policy's ``lr``; NaN where its stage freezes
    it), or nothing when every group trains at the policy's own LR."""
    from clrctl.series import group_lr_traces

    mults = {g.name: g.lr_mult for g in cfg.optimizer.groups} or {name: 1.0 for name in cfg.optimizer.group_names()}
    frozen = {stage.name: stage.freeze for stage in cfg.plan()}
    if all(m == 1 for m in mults.values()) and not any(frozen.values()):
        return {}
    return {name: list(trace) for name, trace in group_lr_traces(lr, stages, mults, frozen).items()}


def in_epochs(duration: Any) -> bool:
    """Whether a duration is written in epochs (``"2 epochs"``), not in steps."""
    return isinstance(duration, str) and "epoch" in duration


def needs_epoch_length(cfg: Config, sweep: bool) -> bool:
    """Whether the schedule to preview has a length in epochs (else the data set is not needed)."""
    if sweep:
        return in_epochs(cfg.range_test.steps)
    durations: list[Any] = []
    for stage in cfg.plan():
        policy = stage.policy
        durations += list(policy.milestones) if policy.name == "step" else []
        if policy.name in (*CYCLIC_POLICIES, "sgdr"):
            durations.append(policy.stepsize)
        if policy.warmup is not None:
            durations.append(policy.warmup)
        if stage.steps is None:
            return True
    return any(in_epochs(d) for d in durations)


def measured_steps_per_epoch(cfg: Config) -> int:
    """Steps per epoch by building the data set (on the CPU), as training would."""
    import torch

    from clrctl.data.datasets import build_data

    return len(build_data(cfg.dataset, cfg.seed, torch.device("cpu")).train)


class EpochLengthUnknown(ConfigError):
    """The schedule has a length in epochs and the data set, needed to measure an epoch,
    could not be loaded (the message is the data set's error)."""


def steps_per_epoch(cfg: Config, sweep: bool) -> Optional[int]:
    """Steps per epoch from the data set's known size, else by loading it when the schedule
    needs it; None when nothing is in epochs and the size is not known without the data.

    Raises :class:`EpochLengthUnknown` when the data set is needed and cannot be loaded."""
    from clrctl.data.datasets import known_steps_per_epoch

    known = known_steps_per_epoch(cfg.dataset)
    if known is not None or not needs_epoch_length(cfg, sweep):
        return known
    try:
        return measured_steps_per_epoch(cfg)
    except ClrctlError as err:
        raise EpochLengthUnknown(str(err)) from None


def epoch_of(step: int, steps_per_epoch: Optional[int]) -> Optional[int]:
    """metrics.csv's epoch column: step t is in epoch ``t // steps_per_epoch + 1``."""
    return None if steps_per_epoch is None else step // steps_per_epoch + 1


def pick_rows(total: int, rows: Optional[int]) -> list[int]:
    """``rows`` evenly spaced steps of ``total``, first and last included; every step for None."""
    if rows is None:
        return list(range(total))
    return sorted({round(i * (total - 1) / (rows - 1)) for i in range(rows)})
