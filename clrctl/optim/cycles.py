"""Where a run's cycles end: the steps at which SWA averages and snapshot ensembles save.

Computed once from the stages' policies (:func:`clrctl.optim.policies.cycle_ends`) as global
step counts, so the callbacks that use them (:mod:`clrctl.track.averaging`) can ask the loop
to sync exactly there; and checked before any run directory exists (:func:`check_averaging`).
"""

from __future__ import annotations

from typing import Optional

from clrctl.config.schema import Stage, TrainConfig, resolve_steps
from clrctl.errors import ConfigError
from clrctl.optim.policies import cycle_ends


def _stage_spans(stages: list[Stage], steps_per_epoch: int) -> list[tuple[Stage, int, int]]:
    spans, start = [], 0
    for stage in stages:
        end = start + stage.length(steps_per_epoch)
        spans.append((stage, start, end))
        start = end
    return spans


def snapshot_steps(stages: list[Stage], steps_per_epoch: int) -> list[int]:
    """Global step counts of the snapshots: each cycle end of a cyclic stage, the last step of
    a stage whose policy has no cycle (Huang et al. 2017: one model per cycle's LR minimum)."""
    steps = []
    for stage, start, end in _stage_spans(stages, steps_per_epoch):
        ends = cycle_ends(stage.policy, steps_per_epoch, end - start)
        steps += [start + k for k in ends] if ends is not None else [end]
    return sorted(set(steps))


def swa_steps(stages: list[Stage], steps_per_epoch: int, start: int) -> list[int]:
    """Global step counts at which SWA averages, from ``start`` on: each cycle end of a cyclic
    stage (Izmailov et al. 2018), each epoch end (and the run's end) inside any other stage."""
    spans = _stage_spans(stages, steps_per_epoch)
    total = spans[-1][2]
    epoch_ends = sorted(set(range(steps_per_epoch, total + 1, steps_per_epoch)) | {total})
    steps = []
    for stage, first, end in spans:
        ends = cycle_ends(stage.policy, steps_per_epoch, end - first)
        steps += [first + k for k in ends] if ends is not None else [e for e in epoch_ends if first < e <= end]
    return sorted(s for s in set(steps) if s >= start)


def check_averaging(train: TrainConfig, stages: list[Stage], steps_per_epoch: int) -> None:
    """``train.swa`` and ``train.snapshots`` that cannot do anything in this run: one
    ConfigError line naming the key (before any run directory exists)."""
    total = sum(stage.length(steps_per_epoch) for stage in stages)
    if train.swa is not None:
        start = resolve_steps(train.swa.start, steps_per_epoch)
        if start > total:
            raise ConfigError(f"train.swa.start: {train.swa.start} ({start} steps) is after the run's end "
                              f"({total} steps)")
        if not swa_steps(stages, steps_per_epoch, start):
            raise ConfigError(f"train.swa.start: {train.swa.start} ({start} steps) leaves no cycle end to "
                              f"average (the run's cycles end at steps {_ends_text(stages, steps_per_epoch)})")
    if train.snapshots:
        for stage, first, end in _stage_spans(stages, steps_per_epoch):
            ends = cycle_ends(stage.policy, steps_per_epoch, end - first)
            if ends is not None and not ends:
                cycle = _cycle_length(stage, steps_per_epoch)
                raise ConfigError(f"train.snapshots: policy {stage.policy.name} completes no cycle in "
                                  f"{end - first} steps (its first cycle is {cycle} steps): no snapshot to take; "
                                  "shorten policy.stepsize or train longer")


def _cycle_length(stage: Stage, steps_per_epoch: int) -> int:
    stepsize = resolve_steps(stage.policy.stepsize, steps_per_epoch)
    return stepsize if stage.policy.name == "sgdr" else 2 * stepsize


def _ends_text(stages: list[Stage], steps_per_epoch: int) -> Optional[str]:
    ends = swa_steps(stages, steps_per_epoch, 0)
    return ", ".join(map(str, ends[-4:])) if ends else "nowhere"


def describe_averaging(train: TrainConfig, stages: list[Stage], steps_per_epoch: Optional[int]) -> list[str]:
    """What ``validate`` and ``preview`` say of the averaging keys that are on (nothing when off)."""
    if train.ema is None and train.swa is None and not train.snapshots:
        return []
    parts = []
    if train.ema is not None:
        parts.append(f"EMA of the weights (decay {train.ema:g}, every step)")
    if train.swa is not None:
        where = (f"steps {_few(swa_steps(stages, steps_per_epoch, resolve_steps(train.swa.start, steps_per_epoch)))}"
                 if steps_per_epoch else f"cycle or epoch ends from {train.swa.start}")
        parts.append(f"SWA at {where}")
    if train.snapshots:
        where = f"steps {_few(snapshot_steps(stages, steps_per_epoch))}" if steps_per_epoch else "each cycle end"
        size = f"the last {train.snapshot_ensemble}" if train.snapshot_ensemble else "all of them"
        parts.append(f"snapshots at {where} (ensemble of {size})")
    return ["  averaging: " + "; ".join(parts)]


def _few(steps: list[int], n: int = 6) -> str:
    shown = ", ".join(map(str, steps[:n]))
    return shown + (f" and {len(steps) - n} more" if len(steps) > n else "")
