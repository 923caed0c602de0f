"""A stage's optimizer and schedule: the one place that builds an optimizer over a model's
parameter groups (training stages and the range test's sweep alike)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from clrctl.config.schema import Stage
from clrctl.optim.groups import ParamGroup, set_bn_frozen, set_frozen, torch_param_groups
from clrctl.optim.optimizers import build_optimizer
from clrctl.optim.policies import Schedule, Warmup, build_schedule, initial_lr
from clrctl.optim.schedulefree import AveragedWeights, averaged_weights


def stage_optimizer(groups: list[ParamGroup], model: nn.Module, stage: Stage, lr: float,
                    bn_freeze: bool = False) -> torch.optim.Optimizer:
    """Freeze the stage's groups (requires_grad off, no optimizer state) and build the stage's
    optimizer over the rest, each group at its ``lr_mult`` x ``lr``. ``bn_freeze``
    (``train.bn_freeze``): the BatchNorm layers that are wholly frozen run in eval mode."""
    set_frozen(groups, stage.freeze)
    set_bn_frozen(model, stage.freeze, bn_freeze)
    params = torch_param_groups(groups, model, stage.optimizer, stage.freeze)
    return build_optimizer(stage.optimizer, params, lr)


@dataclass
class StageRun:
    """A stage in progress: its optimizer over the groups it trains, and its schedule.
    ``averaged``: for an optimizer that keeps averaged weights (Schedule-Free), the context
    in which the model holds them — evaluations and checkpoints enter it; None otherwise."""

    index: int
    stage: Stage
    optimizer: torch.optim.Optimizer
    schedule: Schedule | Warmup
    averaged: Optional[AveragedWeights] = None


def build_stage(setup, index: int) -> StageRun:
    """Stage ``index`` of ``setup`` (a :class:`~clrctl.engine.setup.Setup`) with a fresh
    optimizer and schedule; the schedule runs over the stage's own steps."""
    stage = setup.stages[index]
    optimizer = stage_optimizer(setup.groups, setup.model, stage, initial_lr(stage.policy),
                                setup.config.train.bn_freeze)
    schedule = build_schedule(stage.policy, stage.optimizer, optimizer, setup.steps_per_epoch,
                              stage.length(setup.steps_per_epoch))
    averaged = averaged_weights(optimizer, setup.model, setup.data.train)
    return StageRun(index, stage, optimizer, schedule, averaged)
