"""A run's setup, built in one place for ``train``, ``range-test``, ``validate`` and resume.

Order matters for bad input: data, model, starting weights and parameter groups are built,
and one batch is put through a throwaway copy of the model, *before* any run directory
exists — so a bad config, a missing data root, weights of another architecture or a model
that does not fit the data leaves nothing behind. Optimizers and schedules belong to a stage
and are built by :func:`clrctl.optim.stages.build_stage` when the stage starts.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from clrctl import interrupts
from clrctl.compat import require_schedulefree, require_tensorboard

from clrctl.engine import ddp as distributed

from clrctl.config.schema import SCHEDULE_FREE, Config, Stage, check_warmup_fit, warn_stepsize_fit
from clrctl.data.datasets import build_data
from clrctl.data.sources import BatchSource, DataBundle, ResizedSource, resize_images
from clrctl.engine.precompute import FeatureSource, decide
from clrctl.engine.device import seed_everything
from clrctl.errors import ConfigError, DataError
from clrctl.optim.cycles import check_averaging
from clrctl.optim.groups import ParamGroup, build_groups, check_trainable
from clrctl.model.losses import build_loss, check_targets
from clrctl.model.build import build_model, head_module, seed_dropout
from clrctl.model.weights import load_weights


@dataclass
class Setup:
    """Everything a run needs but its optimizer state; ``stages`` has one entry without ``stages:``."""

    config: Config
    seed: int
    device: torch.device
    data: DataBundle
    model: nn.Module
    groups: list[ParamGroup]
    stages: list[Stage]
    steps_per_epoch: int
    weights: Optional[dict[str, Any]] = None  # source and re-initialised keys of model.weights
    loss_fn: nn.Module = field(default_factory=nn.CrossEntropyLoss)
    _resized: dict[int, DataBundle] = field(default_factory=dict, repr=False)  # the stages' other sizes
    # train.precompute: per stage {stage, used, reason} (clrctl.engine.precompute.decide)
    precompute: list[dict[str, Any]] = field(default_factory=list)

    def trains_on(self, index: int, net: nn.Module) -> tuple[BatchSource, nn.Module]:
        """What stage ``index`` trains on and with: its data's training batches and ``net`` (the
        model as it trains) — or, where its head trains alone on precomputed features, those
        features (computed at the stage's first batch, from the weights it starts with) and the head."""
        train = self.stage_data(index).train
        if not (index < len(self.precompute) and self.precompute[index]["used"]):
            return train, net
        head = head_module(self.model)
        return FeatureSource(train, self.model, head, getattr(train, "seed", self.seed)), self.model.get_submodule(head)

    def stage_data(self, index: int) -> DataBundle:
        """The data stage ``index`` trains and evaluates on: at its ``dataset.image_size``
        (progressive resizing), else the data set's own; one bundle per size, built once."""
        size = self.stages[index].image_size
        if size is None or tuple(self.data.input_shape[-2:]) == (size, size):
            return self.data
        if size not in self._resized:
            self._resized[size] = resized_data(self.config, self.seed, self.device, self.data, size)
        return self._resized[size]

    @property
    def stage_ends(self) -> list[int]:
        """The global step at which each stage ends (exclusive): one step counter for all."""
        ends, total = [], 0
        for stage in self.stages:
            total += stage.length(self.steps_per_epoch)
            ends.append(total)
        return ends

    @property
    def total_steps(self) -> int:
        return self.stage_ends[-1]

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def stage_index(self, step: int) -> int:
        """The stage that trains global step ``step`` (the last one past the end)."""
        return next((i for i, end in enumerate(self.stage_ends) if step < end), len(self.stages) - 1)

    def stage_start(self, index: int) -> int:
        return 0 if index == 0 else self.stage_ends[index - 1]

    def describe_groups(self) -> list[dict[str, Any]]:
        return [g.describe() for g in self.groups]


def build_setup(config: Config, seed: Optional[int] = None, *, probe: bool = True) -> Setup:
    """Data (split and order from ``seed``), a freshly initialised model with its starting
    weights on the device, and its parameter groups; raises ConfigError on bad input."""
    seed = config.seed if seed is None else seed
    if config.train.tensorboard:
        require_tensorboard()  # a missing package is bad input, before any run directory
    for stage in config.plan():
        if stage.optimizer.name in SCHEDULE_FREE:
            require_schedulefree(f"stages.{stage.name}.optimizer.name" if config.has_stages else "optimizer.name")
    seed_everything(seed)
    device = distributed.join(config)  # config.device resolved; under DDP: this rank's GPU
    data = build_data(config.dataset, seed, device)
    distributed.shard_data(data)
    check_tta(config, data.input_shape)
    model = build_model(config.model, data.input_shape, data.num_classes)
    weights = load_weights(model, config.model)
    seed_dropout(model, seed, device, distributed.world().rank)  # (model.dropout: masks from the run's seed)
    setup = assemble(config, seed, device, data, model.to(device), weights=weights)
    if probe:
        probe_batch(setup)
    interrupts.check()  # a Ctrl-C during these slow steps may have been swallowed
    return setup


def assemble(config: Config, seed: int, device: torch.device, data: DataBundle, model: nn.Module, *,
             weights: Optional[dict[str, Any]] = None, loss_fn: Optional[nn.Module] = None,
             groups: Optional[list[ParamGroup]] = None, checked: bool = True) -> Setup:
    """A :class:`Setup` from its built parts (the data and a model on ``device``): parameter
    groups (``config.optimizer``'s, unless given), the planned stages with their frozen groups
    checked, the loss (``train.loss``'s, unless given). :func:`build_setup` and the notebook
    API (:func:`clrctl.api.lr_find`, the caller's own model and data) both end here.
    ``checked``: refuse a stage that freezes everything, warn of a stepsize that does not fit
    (off for ``lr_find``, whose optimizer is the caller's and whose policy is the sweep)."""
    groups = build_groups(model, config.optimizer) if groups is None else groups
    stages = config.plan()
    if checked:
        for stage in stages:
            check_trainable(groups, stage.freeze, f"stages.{stage.name}" if config.has_stages else "optimizer")
        check_warmup_fit(stages, len(data.train), config.has_stages)
        check_stage_sizes(config, stages, data.input_shape, len(data.train))
        check_averaging(config.train, stages, len(data.train))  # (an error first: no warning before it)
        warn_stepsize_fit(stages, len(data.train), config.has_stages)
    precompute = decide(config, model, groups, stages, len(data.train), data.input_shape, data.train.num_samples,
                        distributed.world().world_size)
    return Setup(config, seed, device, data, model, groups, stages, len(data.train), weights,
                 build_loss(config.train) if loss_fn is None else loss_fn, precompute=precompute)


def resized_data(config: Config, seed: int, device: torch.device, data: DataBundle, size: int) -> DataBundle:
    """``data`` at ``size`` x ``size``: an image folder loaded again at that size (the same
    split and order: both come from the seed), other images resized per batch on the device."""
    if config.dataset.name == "imagefolder":
        bundle = build_data(config.dataset.model_copy(update={"image_size": size}), seed, device)
        distributed.shard_data(bundle)
        return bundle
    return DataBundle(ResizedSource(data.train, size), ResizedSource(data.val, size),
                      (*data.input_shape[:-2], size, size), data.num_classes, data.name)


# Built-in models whose classifier takes a flattened input of the size they were built for.
FIXED_SIZE_MODELS = ("mlp", "lenet")


def check_stage_sizes(config: Config, stages: list[Stage], input_shape: tuple[int, ...], steps_per_epoch: int) -> None:
    """A stage's ``dataset.image_size`` needs images and a model that takes another size, and a
    stage that changes the size must start at an epoch boundary (an epoch has one size)."""
    start, previous = 0, None
    for index, stage in enumerate(stages):
        key = f"stages.{stage.name}.dataset.image_size"
        size = stage.image_size
        if size is not None and len(input_shape) != 3:
            raise ConfigError(f"{key}: needs images (C, H, W); {config.dataset.name}'s samples have shape "
                              f"{tuple(input_shape)}")
        if size is not None and config.model.name in FIXED_SIZE_MODELS:
            raise ConfigError(f"{key}: model {config.model.name} flattens its input at the size it was built for "
                              f"({input_shape[-2]}x{input_shape[-1]}), so it cannot train at {size}x{size}; "
                              f"resnet20/56 and torchvision: models pool globally and can")
        effective = size if size is not None else tuple(input_shape[-2:])
        effective = (effective, effective) if isinstance(effective, int) else effective
        if index and effective != previous and start % steps_per_epoch:
            changed = stage if stage.image_size is not None else stages[index - 1]
            raise ConfigError(f"stages.{changed.name}.dataset.image_size: stage {stage.name!r} starts at step {start}, "
                              f"inside an epoch ({steps_per_epoch} steps), at another image size than the stage "
                              f"before it; give the stages before it whole epochs (epochs:)")
        previous = effective
        start += stage.length(steps_per_epoch)


def check_tta(config: Config, input_shape: tuple[int, ...]) -> None:
    """``train.tta: hflip`` flips the last axis of images (C, H, W); flat features have none."""
    if config.train.tta and len(input_shape) != 3:
        raise ConfigError(f"train.tta: {config.train.tta} needs images of shape (C, H, W); "
                          f"{config.dataset.name}'s samples have shape {tuple(input_shape)}")


def probe_batch(setup: Setup) -> None:
    """Forward, loss and backward of a few training samples on a throwaway copy of the model,
    under a forked RNG: a model that does not fit the data fails here, as one line, before
    any run directory exists — not at step 0 of a run."""
    model_name = setup.config.model.name
    source = setup.data.train.head(4)
    if hasattr(source, "num_workers"):
        source.num_workers = 0  # one tiny batch is not worth starting worker processes
    x, y = next(iter(source.batches(0)))
    check_targets(setup.config.train, y, setup.config.dataset.name)
    devices = [setup.device] if setup.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        model = copy.deepcopy(setup.model).train()
        try:
            loss = setup.loss_fn(model(x), y)
            loss.backward()
        except DataError:  # an unreadable sample: already one line naming the file
            raise
        except Exception as err:  # noqa: BLE001 - any failure here is a model/data mismatch
            raise ConfigError(f"model.name: {model_name} does not fit the data: a batch of shape "
                              f"{tuple(x.shape)} ({setup.data.num_classes} classes) fails with "
                              f"{type(err).__name__}: {_first_line(err)}") from err
        for stage in setup.stages:  # progressive resizing: the model must take each stage's size
            if stage.image_size is None:
                continue
            try:
                model(resize_images(x, stage.image_size))
            except Exception as err:  # noqa: BLE001 - a model that needs one input size
                raise ConfigError(f"stages.{stage.name}.dataset.image_size: model {model_name} does not take "
                                  f"{stage.image_size}x{stage.image_size} images: {type(err).__name__}: "
                                  f"{_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
