"""The config schema: YAML -> a validated, typed :class:`Config`.

Every default of clrctl is defined here, once. Unknown keys are errors that name the key
(with a "did you mean"), and every validation failure becomes one :class:`ConfigError` line
of the form ``<dotted.key>: <what was expected>`` (worded by :mod:`clrctl.config.messages`).
Durations such as ``stepsize`` accept an integer number of optimizer steps or ``"N epochs"``;
they are resolved to steps by :func:`resolve_steps` once the data set (and so the steps per
epoch) is known. A config is validated once, its stages resolved with it (:meth:`Config.plan`);
``bounds: {from: RUN}`` is read from that run by :mod:`clrctl.runs.bounds`.
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys
import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from clrctl.config import yamlsafe
from clrctl.config.messages import describe_validation_error, did_you_mean
from clrctl.errors import ClrctlWarning, ConfigError, echo, warn

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder", "synthetic")
BUILTIN_MODELS = ("mlp", "lenet", "resnet20", "resnet56")
POLICIES = ("fixed", "triangular", "triangular2", "exp_range", "one_cycle", "cosine", "sgdr", "step", "linear", "wsd")
CYCLIC_POLICIES = ("triangular", "triangular2", "exp_range")
# Policies that may decay to an LR of 0: bounds [0, max_lr] (SPEC "Baselines beside CLR").
ZERO_BASE_POLICIES = ("linear", "wsd", "cosine")
WSD_SHAPES = ("linear", "sqrt", "cosine")
TARGET_METRICS = ("val_acc", "val_loss")
# Optimizers beside CLR (SPEC "Baselines beside CLR"): Schedule-Free (its own averaging replaces
# the schedule: policy fixed only) and Muon (2-D hidden weights; AdamW for the rest).
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "schedulefree_sgd", "schedulefree_adamw", "muon")
SCHEDULE_FREE = ("schedulefree_sgd", "schedulefree_adamw")
# The momentum an optimizer takes when optimizer.momentum is not set: Schedule-Free SGD's and
# Muon's own defaults (both need one; clrctl's default of 0 is torch SGD's).
DEFAULT_MOMENTUM = {"schedulefree_sgd": 0.9, "muon": 0.95}
EARLY_STOP_METRICS = ("val_acc", "val_loss")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(steps?|epochs?)\s*$")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

# Bounds that keep every value runnable (issue 17: values validate accepted and train then
# failed on). Generous: far beyond what a run needs, far below what overflows or exhausts memory.
MAX_STEPS = 10**9  # a duration or train.steps, in optimizer steps
MAX_EPOCHS = 10**6
MAX_BATCH = 2**20  # dataset.batch_size, eval_batch_size
MAX_WIDTH = 2**16  # one hidden layer of the mlp
MAX_LAYERS = 256
# Any learning rate: below MIN_LR float32 rounds every update to nothing; MAX_LR is far past any
# training LR (and lets a divergence be forced on purpose, as the tests do with 1e8) yet far from
# float32's overflow.
MIN_LR, MAX_LR = 1e-12, 1e10
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
MAX_NAME = 100  # a run or stage name, part of a directory name (255 bytes at most)


def _no_bool(value: Any) -> Any:
    # YAML's true/false are ints to pydantic (and Python): never a count or a rate here.
    if isinstance(value, bool):
        raise ValueError(f"expected a number (got {str(value).lower()})")
    return value


def _yaml_off(value: Any) -> Any:
    # YAML 1.1 reads a bare off / on as false / true: train.precompute: off means "off".
    return {False: "off", True: "on"}.get(value, value) if isinstance(value, bool) else value


# Numbers that refuse true/false; floats are finite (.inf and .nan are YAML floats too).
Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]
LR = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False, ge=MIN_LR, le=MAX_LR)]

# A duration: optimizer steps (int) or "N epochs" / "N steps".
Duration = Union[int, str]


def _check_duration(value: Duration) -> Duration:
    if isinstance(value, bool):
        raise ValueError("expected a number of steps or 'N epochs'")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"must be positive (got {value})")
        if value > MAX_STEPS:
            raise ValueError(f"at most {MAX_STEPS:.0e} steps (got {echo(value)})")
        return value
    if isinstance(value, float):
        raise ValueError(f"expected an integer number of steps or 'N epochs' (got {value})")
    match = _DURATION_RE.match(str(value))
    if not match:
        raise ValueError(f"expected an integer number of steps or 'N epochs' (got {value!r})")
    amount, unit = float(match.group(1)), match.group(2)
    if amount <= 0:
        raise ValueError(f"must be positive (got {value!r})")
    limit = MAX_EPOCHS if unit.startswith("epoch") else MAX_STEPS
    if amount > limit:
        raise ValueError(f"at most {limit:.0e} {unit} (got {echo(value)})")
    return value


def check_micro_batches(batch_size: int, accumulate: int, world_size: int) -> None:
    """``dataset.batch_size`` is the global batch of one optimizer step: it must divide by
    ``train.accumulate`` x the processes (each micro-batch is that share). Raises ValueError."""
    parts = accumulate * world_size
    if accumulate > 1 and batch_size % parts:
        procs = f" x the {world_size} processes" if world_size > 1 else ""
        raise ValueError(f"train.accumulate: dataset.batch_size {batch_size} does not divide by train.accumulate "
                         f"{accumulate}{procs} (each micro-batch is batch_size / {parts}; try "
                         f"{max(parts, batch_size // parts * parts)})")


def resolve_steps(value: Duration, steps_per_epoch: int) -> int:
    """A duration in optimizer steps: ``2000`` -> 2000, ``"2 epochs"`` -> 2 x steps_per_epoch."""
    if isinstance(value, int):
        return value
    match = _DURATION_RE.match(value)
    assert match, value  # validated by the schema
    amount, unit = float(match.group(1)), match.group(2)
    steps = amount * steps_per_epoch if unit.startswith("epoch") else amount
    return max(1, int(round(steps)))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DatasetConfig(_Section):
    name: str = "digits"  # one of DATASETS, or module:callable returning (train, val) (clrctl.data.userdata)
    batch_size: Int = Field(32, gt=0, le=MAX_BATCH)
    val_fraction: Float = Field(0.25, gt=0.0, lt=1.0)  # for data sets without an official split
    root: str = "data"  # where torchvision / imagefolder data live
    download: bool = False  # let torchvision fetch the data when a network is there
    augment: bool = False  # random crop (pad 4) + horizontal flip, done on the device
    eval_batch_size: Int = Field(1024, gt=0, le=MAX_BATCH)
    drop_last: bool = False  # training only: drop each epoch's last, partial batch (validation keeps it)
    # synthetic: a seeded, learnable task of any size
    num_samples: Int = Field(2048, gt=1, le=10**8)
    num_features: Int = Field(32, gt=0, le=MAX_WIDTH)
    num_classes: Int = Field(10, gt=1, le=10**6)  # module:callable data: inferred from the labels unless set
    # imagefolder: images are resized to image_size x image_size; loaded by worker processes
    image_size: Int = Field(32, gt=0, le=4096)
    num_workers: Int = Field(2, ge=0, le=256)
    # a subset of the labels, renumbered 0..k-1 in this order (e.g. pretrain on digits 0-5)
    classes: Optional[list[Int]] = None

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name in DATASETS:
            return name
        module, sep, attr = name.partition(":")
        if sep and module and attr:
            return name
        choices = ", ".join(repr(d) for d in DATASETS)
        raise ValueError(f"Input should be one of {choices} or 'module:callable' (got {name!r})")

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, classes: Optional[list[int]]) -> Optional[list[int]]:
        if classes is not None and (len(classes) < 2 or len(set(classes)) != len(classes) or min(classes) < 0):
            raise ValueError(f"expected two or more distinct non-negative labels (got {classes})")
        return classes


class ModelConfig(_Section):
    name: str = "mlp"  # mlp | lenet | resnet20 | resnet56 | torchvision:<name> | module:callable
    hidden: list[Int] = Field([64, 64], max_length=MAX_LAYERS)  # mlp hidden sizes, each <= MAX_WIDTH
    args: dict[str, Any] = {}  # extra keyword arguments for torchvision or user models
    # start from these weights: a state_dict file (.pt) or a run directory (its best.pt, else last.pt)
    weights: Optional[str] = None
    # dropout rate before the classifier layer (fastai's ps); None or 0: none (built-in and torchvision models)
    dropout: Optional[Float] = Field(None, ge=0.0, lt=1.0)

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if name in BUILTIN_MODELS or ":" in name:
            module, _, attr = name.partition(":")
            if ":" in name and (not module or not attr):
                raise ValueError(f"expected 'torchvision:<name>' or 'module:callable' (got {name!r})")
            return name
        hint = did_you_mean(name, BUILTIN_MODELS)
        raise ValueError(
            f"unknown model {name!r}{hint}; expected one of {', '.join(BUILTIN_MODELS)}, "
            "torchvision:<name> or module:callable"
        )

    @field_validator("hidden")
    @classmethod
    def _positive_sizes(cls, hidden: list[int]) -> list[int]:
        if any(h <= 0 for h in hidden):
            raise ValueError(f"hidden sizes must be positive (got {echo(hidden)})")
        if any(h > MAX_WIDTH for h in hidden):
            raise ValueError(f"hidden sizes must be at most {MAX_WIDTH} (got {echo(hidden)})")
        return hidden


REST_GROUP = "rest"  # parameters that no configured group matches
DEFAULT_GROUPS = ("body", "head")  # every built-in and torchvision model, without groups:
NO_DECAY_KINDS = ("bias", "norm")


class GroupConfig(_Section):
    """A named parameter group (timm's ``lr_scale`` per group): fnmatch patterns on the names
    of ``model.named_parameters()``; the first matching group wins."""

    name: str
    # fnmatch patterns; body / head may leave them out to mean the built-in split
    params: Optional[list[str]] = Field(None, min_length=1)
    lr_mult: Float = Field(1.0, gt=0.0, le=MAX_LR)  # this group's LR = the policy's LR x lr_mult
    weight_decay: Optional[Float] = Field(None, ge=0.0, le=10.0)  # default: optimizer.weight_decay

    @model_validator(mode="after")
    def _params_or_builtin(self) -> "GroupConfig":
        if self.params is None and self.name not in DEFAULT_GROUPS:
            raise ValueError(f"params: group {self.name!r} needs params: [patterns] "
                             f"(only {' and '.join(DEFAULT_GROUPS)} may leave them out: the built-in split)")
        return self


class OptimizerConfig(_Section):
    name: Literal[OPTIMIZERS] = "sgd"  # type: ignore[valid-type]
    momentum: Float = Field(0.0, ge=0.0, lt=1.0)  # sgd / rmsprop (0); schedulefree_sgd 0.9, muon 0.95
    nesterov: bool = False
    weight_decay: Float = Field(0.0, ge=0.0, le=10.0)
    betas: tuple[Annotated[Float, Field(ge=0.0, lt=1.0)], Annotated[Float, Field(ge=0.0, lt=1.0)]] = (0.9, 0.999)
    eps: Float = Field(1e-8, gt=0.0, le=1.0)
    groups: list[GroupConfig] = []  # none: built-in models have body / head
    # exempt biases and/or normalisation weights from weight decay (nanoGPT's and timm's habit)
    no_decay: list[Literal[NO_DECAY_KINDS]] = []  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "OptimizerConfig":
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            raise ValueError("nesterov: needs optimizer.name: sgd and momentum > 0")
        names = [g.name for g in self.groups]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ValueError(f"groups: the group name {duplicate!r} is used twice")
        if REST_GROUP in names:
            raise ValueError(f"groups: {REST_GROUP!r} is reserved for the parameters no group matches")
        if self.name in DEFAULT_MOMENTUM and "momentum" not in self.model_fields_set:
            self.momentum = DEFAULT_MOMENTUM[self.name]
        if self.name == "schedulefree_sgd" and self.momentum <= 0:
            raise ValueError("momentum: schedulefree_sgd needs 0 < momentum < 1 (its average's interpolation; "
                             "default 0.9)")
        return self

    def group_names(self) -> list[str]:
        """The groups a model will have (``rest`` only where parameters are left over)."""
        if not self.groups:
            return list(DEFAULT_GROUPS)
        return [g.name for g in self.groups] + [REST_GROUP]


class BoundsFrom(_Section):
    """``bounds: {from: runs/<range-test run>}`` — take the bounds a range test suggested."""

    from_: str = Field(alias="from")
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# Per-policy defaults of ``gamma``: the paper's exp_range value, torch MultiStepLR's usual 0.1.
GAMMA_DEFAULTS = {"exp_range": 0.99994, "step": 0.1}
# wsd's defaults: decay over the last 20% of the run (Hägele et al. 2024, arXiv 2405.18392), in
# the 1 - sqrt shape they found best.
WSD_DECAY = 0.2
WSD_DECAY_SHAPE = "sqrt"
# 1cycle's default momentum range (1803.09820; torch OneCycleLR base/max momentum).
ONE_CYCLE_MOMENTUM = (0.85, 0.95)


class PolicyConfig(_Section):
    name: Literal[POLICIES] = "fixed"  # type: ignore[valid-type]
    bounds: Optional[Union[tuple[Float, Float], BoundsFrom]] = None  # [base_lr, max_lr]
    lr: Optional[LR] = None  # fixed / step: the starting LR
    stepsize: Duration = "2 epochs"  # half a cycle (CLR); T_0 for sgdr
    gamma: Optional[Float] = Field(None, gt=0.0, le=10.0)  # exp_range: per step; step: factor per milestone
    momentum: Optional[tuple[float, float]] = None  # [low, high], cycled inversely to the LR
    milestones: list[Duration] = []  # step: when to multiply by gamma
    t_mult: Int = Field(1, ge=1, le=100)  # sgdr: cycle length multiplier
    pct_start: Float = Field(0.3, gt=0.0, lt=1.0)  # one_cycle: share of the run spent rising
    final_div: Float = Field(1e4, gt=0.0, le=1e12)  # one_cycle: final LR = base_lr / final_div
    anneal: Literal["cos", "linear"] = "cos"  # one_cycle
    three_phase: bool = False  # one_cycle: the paper's 3-phase form
    decay: Optional[float] = Field(None, gt=0.0, le=1.0)  # wsd: share of the run decaying (WSD_DECAY)
    decay_shape: Optional[Literal[WSD_SHAPES]] = None  # type: ignore[valid-type]  # wsd (WSD_DECAY_SHAPE)
    # A linear ramp over the first ``warmup`` steps of the stage/run from warmup_start x the
    # policy's first LR to that LR; the policy then runs over the remaining steps.
    warmup: Optional[Duration] = None
    warmup_start: Float = Field(0.0, ge=0.0, le=1.0)

    @field_validator("stepsize")
    @classmethod
    def _stepsize(cls, value: Duration) -> Duration:
        return _check_duration(value)

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, values: list[Duration]) -> list[Duration]:
        return [_check_duration(v) for v in values]

    @field_validator("warmup")
    @classmethod
    def _warmup(cls, value: Optional[Duration]) -> Optional[Duration]:
        return None if value is None else _check_duration(value)

    @field_validator("bounds")
    @classmethod
    def _ordered_bounds(cls, bounds):
        if isinstance(bounds, tuple):
            base, high = bounds
            if not (math.isfinite(base) and math.isfinite(high)) or base < 0:
                raise ValueError(f"learning rates must be finite and not negative (got {list(bounds)})")
            if (base and base < MIN_LR) or high < MIN_LR or high > MAX_LR:
                raise ValueError(f"learning rates must lie in [{MIN_LR:g}, {MAX_LR:g}] (got {list(bounds)})")
            if base >= high:
                raise ValueError(f"base_lr must be < max_lr (got [{base}, {high}])")
        return bounds

    @field_validator("momentum")
    @classmethod
    def _momentum_range(cls, momentum):
        if momentum is not None:
            low, high = momentum
            if not (0.0 <= low <= high < 1.0):
                raise ValueError(f"expected [low, high] with 0 <= low <= high < 1 (got {list(momentum)})")
        return momentum

    @model_validator(mode="after")
    def _needs_lr(self) -> "PolicyConfig":
        if self.bounds is None and not (self.name in ("fixed", "step") and self.lr is not None):
            raise ValueError(
                f"bounds: policy {self.name!r} needs bounds: [base_lr, max_lr]"
                + (" (or lr:)" if self.name in ("fixed", "step") else "")
            )
        if self.momentum is not None and self.name in ("fixed", "step"):
            raise ValueError(f"momentum: cycling needs a policy whose LR moves between bounds, not {self.name!r}")
        if self.name == "exp_range" and self.gamma is not None and self.gamma > 1.0:
            raise ValueError(f"gamma: exp_range shrinks the cycles by gamma per step: expected gamma <= 1 "
                             f"(got {self.gamma})")
        if self.name == "step" and not self.milestones:
            raise ValueError("milestones: policy 'step' needs milestones (steps or 'N epochs')")
        if isinstance(self.bounds, tuple) and self.bounds[0] == 0 and self.name not in ZERO_BASE_POLICIES:
            raise ValueError(f"bounds: base_lr 0 is allowed for {', '.join(ZERO_BASE_POLICIES)} only, "
                             f"not {self.name!r} (got {list(self.bounds)})")
        for key in ("decay", "decay_shape"):
            if getattr(self, key) is not None and self.name != "wsd":
                raise ValueError(f"{key}: applies to policy 'wsd' only, not {self.name!r}")
        return self

    @property
    def effective_gamma(self) -> float:
        return self.gamma if self.gamma is not None else GAMMA_DEFAULTS.get(self.name, 1.0)

    @property
    def wsd_decay(self) -> float:
        return self.decay if self.decay is not None else WSD_DECAY

    @property
    def wsd_decay_shape(self) -> str:
        return self.decay_shape if self.decay_shape is not None else WSD_DECAY_SHAPE

    @property
    def base_lr(self) -> float:
        return self.bounds[0] if isinstance(self.bounds, tuple) else self.lr  # type: ignore[index]

    @property
    def max_lr(self) -> float:
        return self.bounds[1] if isinstance(self.bounds, tuple) else self.lr  # type: ignore[index]


def check_optimizer_policy(optimizer: "OptimizerConfig", policy: "PolicyConfig") -> None:
    """What an optimizer refuses of a policy (SPEC "Baselines beside CLR"): Schedule-Free takes
    ``fixed`` only; Muon keeps its momentum (none cycled). A ValueError naming the key."""
    if optimizer.name in SCHEDULE_FREE and policy.name != "fixed":
        raise ValueError(f"policy: optimizer {optimizer.name} takes policy: fixed only (its averaging "
                         f"replaces a schedule), not {policy.name!r}")
    if optimizer.name == "muon" and policy.momentum is not None:
        raise ValueError("policy: optimizer muon keeps its own momentum; drop policy.momentum")


class EarlyStopConfig(_Section):
    """``train.early_stop``: stop once ``metric`` has not improved by more than ``min_delta``
    for ``patience`` evaluations in a row (SPEC "Training extras")."""

    metric: Literal[EARLY_STOP_METRICS] = "val_acc"  # type: ignore[valid-type]
    patience: Int = Field(3, gt=0, le=MAX_STEPS)  # in evaluations
    min_delta: Float = Field(0.0, ge=0.0)


class SwaConfig(_Section):
    """``train.swa``: stochastic weight averaging from ``start`` on (SPEC "Training extras")."""

    start: Duration  # steps or "N epochs": the first cycle end (or epoch end) averaged

    @field_validator("start")
    @classmethod
    def _start(cls, value: Duration) -> Duration:
        return _check_duration(value)


class TrainConfig(_Section):
    epochs: Optional[Int] = Field(None, gt=0, le=MAX_EPOCHS)  # default 8 when neither epochs nor steps is set
    steps: Optional[Int] = Field(None, gt=0, le=MAX_STEPS)
    target: Optional[dict[str, Float]] = None  # e.g. {val_acc: 0.97}: record steps_to_target
    eval_every: Optional[Int] = Field(None, gt=0, le=MAX_STEPS)  # steps between evaluations; default: per epoch
    log_every: Int = Field(25, gt=0, le=MAX_STEPS)  # steps between host syncs for loss logging / progress
    # seconds between checkpoints/last.pt writes at epoch ends (0: every epoch); always at the
    # end of a run and when interrupted
    checkpoint_every: Float = Field(10.0, ge=0)
    skip_nonfinite: bool = False  # skip batches with NaN/Inf loss instead of stopping
    amp: bool = False  # mixed precision on CUDA (ignored elsewhere): the same as precision: fp16 there
    # The GPU fast path (each also runs on the CPU): autocast to bf16 or fp16 (a GradScaler for
    # fp16 only), channels_last memory format for image models, torch.compile on the model.
    precision: Optional[Literal["fp32", "bf16", "fp16"]] = None  # default: fp32 (fp16 with amp on CUDA)
    channels_last: bool = False
    compile: bool = False
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"  # mse: float regression targets, no accuracy
    label_smoothing: Float = Field(0.0, ge=0.0, lt=1.0)  # torch CrossEntropyLoss(label_smoothing); val_loss too
    tensorboard: bool = False  # also write TensorBoard events to RUN/tensorboard/ (extra clrctl[tensorboard])
    tta: Optional[Literal["hflip"]] = None  # evaluation also averages each image's logits with its flip's
    early_stop: Optional[EarlyStopConfig] = None  # stop when the metric stops improving
    # torch.nn.utils.clip_grad_norm_ before each optimizer step (metrics.csv: a grad_norm column)
    clip_grad_norm: Optional[Float] = Field(None, gt=0.0, le=1e12)
    # micro-batches per optimizer step; dataset.batch_size stays the global batch of one step
    accumulate: Int = Field(1, ge=1, le=MAX_BATCH)
    # Averaged weights and snapshot ensembles (SPEC "Training extras"; clrctl.track.averaging)
    ema: Optional[Float] = Field(None, gt=0.0, lt=1.0)  # decay of an EMA of the weights, each step
    swa: Optional[SwaConfig] = None  # {start: N epochs}: SWA at cycle ends (or epoch ends)
    snapshots: bool = False  # a snapshot of the weights at each cycle's end
    snapshot_ensemble: Optional[Int] = Field(None, gt=0, le=1000)  # ensemble of the last K (default: all)
    # fastai's recipe for a frozen body: BatchNorm layers none of whose parameters train in a stage
    # run in eval mode there (running statistics fixed: fastai's BnFreeze); and the head of a stage
    # that trains nothing else is trained on the body's features, computed once (fastai's precompute;
    # auto: where that gives what the slow path gives and the stage has two or more epochs; on: a
    # one-epoch stage too; see clrctl.engine.precompute)
    bn_freeze: bool = False
    precompute: Annotated[Literal["auto", "on", "off"], BeforeValidator(_yaml_off)] = "auto"

    def autocast_dtype(self, device_type: str) -> Optional[str]:
        """"bfloat16"/"float16" to autocast to on ``device_type``, or None (fp32)."""
        precision = self.precision or ("fp16" if self.amp and device_type == "cuda" else "fp32")
        return {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}[precision]

    @model_validator(mode="after")
    def _amp_is_fp16(self) -> "TrainConfig":
        if self.amp and self.precision not in (None, "fp16"):
            raise ValueError(f"amp: amp: true means precision: fp16; drop it to use precision: {self.precision}")
        return self

    @model_validator(mode="after")
    def _one_length(self) -> "TrainConfig":
        if self.loss == "mse" and self.label_smoothing:
            raise ValueError("label_smoothing: applies to train.loss: cross_entropy only")
        if self.loss == "mse" and self.target and "val_acc" in self.target:
            raise ValueError("target: train.loss: mse measures no accuracy; use {val_loss: ...}")
        if self.loss == "mse" and self.early_stop and self.early_stop.metric == "val_acc":
            raise ValueError("early_stop.metric: train.loss: mse measures no accuracy; use metric: val_loss")
        if self.loss == "mse" and self.tta:
            raise ValueError("tta: train.loss: mse measures no accuracy for test-time augmentation to improve")
        if self.epochs is not None and self.steps is not None:
            raise ValueError("epochs: give train.epochs or train.steps, not both (on the command line: train.epochs=null train.steps=N)")
        if self.epochs is None and self.steps is None:
            self.epochs = 8
        if self.snapshots and self.loss == "mse":
            raise ValueError("snapshots: an ensemble of snapshots is judged by accuracy; train.loss: mse has none")
        if self.snapshot_ensemble is not None and not self.snapshots:
            raise ValueError("snapshot_ensemble: needs train.snapshots: true")
        return self

    @field_validator("target")
    @classmethod
    def _target_metric(cls, target):
        if target is not None and len(target) != 1:
            raise ValueError(f"expected one metric and its threshold, e.g. {{val_acc: 0.97}} (got {target})")
        for metric in target or {}:
            if metric not in TARGET_METRICS:
                raise ValueError(f"unknown target metric {metric!r}; expected one of {', '.join(TARGET_METRICS)}")
        for metric, threshold in (target or {}).items():
            if metric == "val_acc" and not 0.0 <= threshold <= 1.0:
                raise ValueError(f"val_acc is a fraction: expected a threshold in [0, 1] (got {threshold})")
            if metric == "val_loss" and threshold < 0.0:
                raise ValueError(f"val_loss is never negative: expected a threshold >= 0 (got {threshold})")
        return target


class RangeTestConfig(_Section):
    start_lr: LR = 1e-4
    end_lr: LR = 1.0
    mode: Literal["linear", "exp"] = "linear"  # linear: the paper; exp: fastai / torch-lr-finder
    steps: Duration = "8 epochs"
    eval_every: Int = Field(10, gt=0, le=MAX_STEPS)  # accuracy on a fixed held-out slice every N steps
    eval_size: Int = Field(512, gt=0, le=10**8)  # size of that fixed slice
    smoothing: Float = Field(0.98, ge=0.0, lt=1.0)  # EMA factor of the (debiased) smoothed loss
    diverge_factor: Float = Field(4.0, gt=1.0)  # stop when smoothed loss passes this x its best

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: Duration) -> Duration:
        return _check_duration(value)

    @model_validator(mode="after")
    def _ordered(self) -> "RangeTestConfig":
        if self.start_lr >= self.end_lr:
            raise ValueError(f"start_lr: must be < end_lr (got {self.start_lr} >= {self.end_lr})")
        return self


def _safe_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise ValueError(f"use letters, digits, '-', '_' or '.' only (got {echo(name)})")
    if len(name) > MAX_NAME:
        raise ValueError(f"at most {MAX_NAME} characters, as it names directories (got {len(name)})")
    return name


# A run or stage name: it becomes part of a directory name and a CSV cell.
SafeName = Annotated[str, AfterValidator(_safe_name)]


class StageDataset(_Section):
    """What a stage may change of the data: the image size (progressive resizing; DAWNBench's
    128 -> 224 -> 288 pixels). Image folders load at this size; tensor images (CIFAR, MNIST,
    digits) are resized on the device, bilinear with antialiasing."""

    image_size: Optional[Int] = Field(None, gt=0, le=4096)


class StageConfig(_Section):
    """One stage of a fine-tuning run (SPEC "Fine-tuning"): what it leaves out comes from
    the top level; ``policy`` and ``optimizer`` are merged key by key over the top-level blocks."""

    name: SafeName
    epochs: Optional[Int] = Field(None, gt=0, le=MAX_EPOCHS)
    steps: Optional[Int] = Field(None, gt=0, le=MAX_STEPS)
    freeze: list[str] = []  # groups that get no updates in this stage
    policy: Optional[dict[str, Any]] = None
    optimizer: Optional[dict[str, Any]] = None
    dataset: Optional[StageDataset] = None  # {image_size: N}: this stage trains and evaluates at N x N

    @model_validator(mode="after")
    def _one_length(self) -> "StageConfig":
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("epochs: a stage needs epochs: or steps: (one of them)")
        if self.optimizer and "groups" in self.optimizer:
            raise ValueError("optimizer: groups are defined once, in the top-level optimizer.groups")
        return self


@dataclass(frozen=True)
class Stage:
    """A stage with its policy and optimizer resolved; a run without ``stages:`` is one stage."""

    name: str
    policy: "PolicyConfig"
    optimizer: "OptimizerConfig"
    epochs: Optional[int]
    steps: Optional[int]
    freeze: tuple[str, ...] = ()
    image_size: Optional[int] = None  # a stage's dataset.image_size (None: the data set's own size)

    def length(self, steps_per_epoch: int) -> int:
        return self.steps if self.steps is not None else self.epochs * steps_per_epoch


class SearchBlock(_Section):
    """``sweep: {search: …}`` — an Optuna search committed with its config, key for key the
    command line's ``--search``/``--trials``/``--param``/… (``clrctl sweep`` checks the values)."""

    sampler: Optional[str] = None  # --search: tpe | random | cmaes | grid (default tpe)
    trials: Optional[Int] = Field(None, ge=1)  # --trials
    params: dict[str, str] = {}  # --param KEY=DIST, as {KEY: DIST}
    metric: Optional[str] = None  # --metric (default val_acc)
    prune: Optional[str] = None  # --prune (default none)
    prune_after: Optional[Int] = Field(None, ge=1)  # --prune-after: no pruning before this step
    sampler_seed: Optional[Int] = Field(None, ge=0)  # --sampler-seed (default: Optuna's random one)
    storage: Optional[str] = None  # --storage
    study: Optional[str] = None  # --study

    @field_validator("params", mode="before")
    @classmethod
    def _texts(cls, params: Any) -> Any:
        if isinstance(params, dict):  # (a YAML value such as 0.1 is not a distribution; say so later)
            return {k: v if isinstance(v, str) else repr(v) for k, v in params.items()}
        return params


class SweepConfig(_Section):
    """``sweep:`` — a grid (or a search) committed with its config; ``clrctl sweep`` reads it,
    ``train`` ignores it."""

    grid: dict[str, list[Any]] = {}  # dotted key -> values; the points are their Cartesian product
    include: list[dict[str, Any]] = []  # extra points ({dotted key: value}), e.g. a fixed-LR baseline
    seeds: Optional[Union[int, str, list[int]]] = None  # as --seeds: 3, "0..4" or [0, 1, 2]
    search: Optional[SearchBlock] = None  # an Optuna search instead of the grid

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"{key}: needs at least one value")
        return grid


class Config(_Section):
    name: SafeName = "run"
    seed: Int = Field(0, ge=0, le=MAX_SEED)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps   (auto: cuda > mps > cpu)
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    policy: PolicyConfig = PolicyConfig(lr=0.01)
    train: TrainConfig = TrainConfig()
    range_test: RangeTestConfig = RangeTestConfig()
    # The config as the user wrote it (YAML plus overrides, before defaults): see as_written().
    _written: Optional[dict[str, Any]] = PrivateAttr(default=None)
    # The stages of a config with stages:, resolved once (see plan()).
    _stages: Optional[tuple["Stage", ...]] = PrivateAttr(default=None)

    stages: list[StageConfig] = []
    sweep: Optional[SweepConfig] = Field(None, exclude=True)  # not part of a run's config.yaml

    @model_validator(mode="before")
    @classmethod
    def _stages_own_the_length(cls, data: Any) -> Any:
        train = data.get("train") if isinstance(data, dict) else None
        if isinstance(data, dict) and data.get("stages") and isinstance(train, dict):
            given = [k for k in ("epochs", "steps") if train.get(k) is not None]
            if given:
                raise ValueError(f"train: with stages, each stage sets epochs: or steps:, not train.{given[0]}")
        return data

    @model_validator(mode="after")
    def _stage_names(self) -> "Config":
        names = [stage.name for stage in self.stages]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ValueError(f"stages: the stage name {duplicate!r} is used twice")
        if self.stages:  # the default length of train: does not apply
            self.train.epochs = self.train.steps = None
        else:
            check_optimizer_policy(self.optimizer, self.policy)
        return self

    @model_validator(mode="after")
    def _micro_batches(self) -> "Config":
        check_micro_batches(self.dataset.batch_size, self.train.accumulate, 1)
        return self

    @property
    def has_stages(self) -> bool:
        return bool(self.stages)

    def plan(self) -> list[Stage]:
        """The stages in order, each with its merged policy and optimizer (one without stages:).

        A staged config's merged blocks are validated on the first call (:func:`validate` makes
        it, so that bad stages fail at load) and kept: later calls return the same stages."""
        if not self.stages:  # nothing to merge: always the config's own blocks
            return [Stage("train", self.policy, self.optimizer, self.train.epochs, self.train.steps)]
        if self._stages is None:
            self._stages = tuple(_resolve_stage(self, stage) for stage in self.stages)
        return list(self._stages)

    def model_copy(self, *, update: Optional[dict[str, Any]] = None, deep: bool = False) -> "Config":
        """pydantic's copy; the resolved stages travel with it only when ``update`` changes
        nothing but the seed (a seed group's runs), which they do not depend on."""
        copied = super().model_copy(update=update, deep=deep)
        if update and set(update) - {"seed"}:
            copied._stages = None
        return copied

    def stage(self, name: str) -> Stage:
        for stage in self.plan():
            if stage.name == name:
                return stage
        known = ", ".join(s.name for s in self.stages) or "none: this config has no stages"
        raise ConfigError(f"--stage {name!r}: no such stage (stages: {known})")

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not _DEVICE_RE.match(device):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps (got {device!r})")
        return device

    def to_dict(self) -> dict[str, Any]:
        """Plain data for config.yaml (``bounds.from`` keeps its YAML spelling). A staged
        config whose stages each name their own policy records no top-level policy unless the
        user wrote one: the default (fixed 0.01) would read as what the run trained."""
        data = json.loads(self.model_dump_json(by_alias=True))
        if self.stages and "policy" not in self.model_fields_set and all(
                (stage.policy or {}).get("name") for stage in self.stages):
            del data["policy"]
        return data

    def as_written(self) -> dict[str, Any]:
        """The keys the user set (file plus overrides), without the defaults; a config not
        loaded from a file gives :meth:`to_dict`."""
        return copy.deepcopy(self._written) if self._written is not None else self.to_dict()

    @property
    def is_range_test(self) -> bool:
        """Whether this config is made for ``clrctl range-test``: by the naming convention of
        ``configs/digits-range-test.yaml``, which ``suggested.yaml`` drops (a config.yaml or
        suggested.yaml holds a ``range_test`` section too, so that section cannot tell)."""
        return self.name.endswith("range-test")


# ---------------------------------------------------------------------------------------
# Loading: file -> dict -> overrides -> validated Config


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read ``path``, apply Hydra-style ``a.b=value`` overrides, and validate."""
    data = read_yaml(path)
    for override in overrides:
        apply_override(data, override)
    locate_paths(data, Path(path).parent)
    config = validate(data, source=str(path))
    config._written = copy.deepcopy(data)
    warn_ignored_keys(data)
    return config


# The policies that read each of these keys; any other policy ignores it.
_KEY_USERS = {"stepsize": ("triangular", "triangular2", "exp_range", "sgdr"), "gamma": ("exp_range", "step")}
# What each key is for, in a warning that it is ignored.
_KEY_ROLE = {"stepsize": "the half cycle of a cyclic policy or sgdr's first period",
             "gamma": "exp_range's decay or step's factor"}


def warn_ignored_keys(data: dict[str, Any]) -> None:
    """Warn about policy keys the chosen policy ignores (``stepsize`` with one_cycle) where they
    are set to other than their default. With stages, each stage's own policy block counts."""
    blocks = [("policy", data.get("policy"))] if not data.get("stages") else []
    top = data.get("policy") if isinstance(data.get("policy"), dict) else {}
    for stage in data.get("stages") or []:
        if isinstance(stage, dict) and isinstance(stage.get("policy"), dict):
            blocks.append((f"stages.{stage.get('name')}.policy", {"name": top.get("name"), **stage["policy"]}))
    for where, block in blocks:
        if not isinstance(block, dict):
            continue
        name = block.get("name") or "fixed"
        for key, users in _KEY_USERS.items():
            # A run's config.yaml spells out every default: only a value that differs is a choice.
            if block.get(key) not in (None, PolicyConfig.model_fields[key].default) and name not in users:
                warn(f"{where}.{key}: ignored by policy {name!r} ({key} is {_KEY_ROLE[key]})")


def warn_stepsize_fit(stages: list["Stage"], steps_per_epoch: int, has_stages: bool) -> None:
    """Warn when a stepsize is as long as the run (or stage) it shapes: a cyclic LR then only
    rises (it never comes back down), sgdr never restarts."""
    for stage in stages:
        policy = stage.policy
        if policy.name not in _KEY_USERS["stepsize"]:
            continue
        stepsize, length = resolve_steps(policy.stepsize, steps_per_epoch), stage.length(steps_per_epoch)
        if stepsize >= length:
            key = f"stages.{stage.name}.policy.stepsize" if has_stages else "policy.stepsize"
            effect = "sgdr never restarts" if policy.name == "sgdr" else "the LR only rises, never comes back down"
            warn(f"{key}: {stepsize} steps is not shorter than the {'stage' if has_stages else 'run'} "
                 f"({length} steps): {effect}")


def check_warmup_fit(stages: list["Stage"], steps_per_epoch: int, has_stages: bool) -> None:
    """``policy.warmup`` must leave the policy at least one step of its stage (or run)."""
    for stage in stages:
        warmup = stage.policy.warmup
        if warmup is None:
            continue
        steps, length = resolve_steps(warmup, steps_per_epoch), stage.length(steps_per_epoch)
        if steps >= length:
            key = f"stages.{stage.name}.policy.warmup" if has_stages else "policy.warmup"
            raise ConfigError(f"{key}: {steps} steps is not shorter than the {'stage' if has_stages else 'run'} "
                              f"({length} steps): the policy would never run")


# The directories of the config files loaded in this process: searched after the working
# directory for relative paths and ``module:callable`` modules (see locate_paths).
CONFIG_DIRS: list[str] = []


def locate_paths(data: dict[str, Any], config_dir: Path) -> None:
    """Relative paths in a config are looked up in the working directory first, then in the
    config file's directory: ``model.weights``, ``bounds.from`` (of the policy and of each
    stage) and ``dataset.root`` become that directory's path where only it has them (so the run's
    config.yaml works from anywhere); ``module:callable`` modules are imported from the working
    directory, then from the config's. A path in neither place is left as written: the error of
    whatever reads it says where it was looked for (:func:`looked_in`)."""
    where = str(config_dir.resolve())
    if where in CONFIG_DIRS:
        CONFIG_DIRS.remove(where)
    CONFIG_DIRS.append(where)  # the latest last
    model, dataset = data.get("model"), data.get("dataset")
    if isinstance(model, dict) and isinstance(model.get("weights"), str):
        model["weights"] = _locate(model["weights"], config_dir)
    if isinstance(dataset, dict) and isinstance(dataset.get("root"), str):
        dataset["root"] = _locate(dataset["root"], config_dir)
    policies = [data.get("policy")] + [s.get("policy") for s in data.get("stages") or [] if isinstance(s, dict)]
    for policy in policies:
        bounds = policy.get("bounds") if isinstance(policy, dict) else None
        if isinstance(bounds, dict) and isinstance(bounds.get("from"), str):
            bounds["from"] = _locate(bounds["from"], config_dir)
    for section in (model, dataset):
        name = section.get("name") if isinstance(section, dict) else None
        if isinstance(name, str) and ":" in name and not name.startswith("torchvision:") and where not in sys.path:
            sys.path.append(where)  # after the working directory, which models.py puts first


def _locate(value: str, config_dir: Path) -> str:
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return value
    beside = config_dir / path
    return str(beside.resolve()) if beside.exists() else value


def looked_in(value: Optional[str] = None) -> str:
    """`` (looked in the working directory … and the config's directory …)`` for an error about
    a relative ``value`` that is nowhere (empty for an absolute one)."""
    if value is not None and Path(value).expanduser().is_absolute():
        return ""
    places = [f"the working directory {Path.cwd()}"] + [f"the config's directory {d}" for d in CONFIG_DIRS[-1:]]
    return f" (looked in {' and '.join(places)})"


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yamlsafe.load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "cannot parse"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    if data is None:
        # Not an error (a config of defaults is valid), but rarely what was meant.
        warnings.warn(f"{path}: the config file is empty; every setting takes its default", ClrctlWarning,
                      stacklevel=2)
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def apply_override(data: dict[str, Any], override: str) -> None:
    """``policy.bounds=[0.01, 0.1]``: the value is parsed as a YAML scalar / flow value."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {override!r}: expected key.path=value")
    try:
        value = yamlsafe.load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        why = f" ({err.problem})" if isinstance(err, yamlsafe.BoundedYAMLError) else ""
        raise ConfigError(f"override {echo(override)}: cannot parse the value as YAML{why}") from None
    node: Any = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):  # stages.1.epochs, optimizer.groups.0.lr_mult
            node = node[_list_index(node, part, override)]
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, (dict, list)):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    if isinstance(node, list):
        node[_list_index(node, parts[-1], override)] = value
    else:
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[:-1])} is not a section")
        node[parts[-1]] = value


def _list_index(items: list, part: str, override: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(f"override {override!r}: {part!r} is not an index of a list of {len(items)}")
    return int(part)


def validate(data: dict[str, Any], source: str = "config") -> Config:
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, data, Config)) from None
    config.plan()  # every stage's merged policy and optimizer must validate too
    return config


class _StageBlocks(_Section):
    """A stage's merged optimizer and policy, validated as :class:`Config` validates its own
    (the same fields in the same order, so the same first error, worded from the same keys)."""

    optimizer: OptimizerConfig
    policy: PolicyConfig

    @model_validator(mode="after")
    def _fit(self) -> "_StageBlocks":
        check_optimizer_policy(self.optimizer, self.policy)
        return self


def _resolve_stage(config: Config, stage: StageConfig) -> Stage:
    """A stage's policy and optimizer: its own keys over the top level's, validated (without
    validating the rest of the config again) so that errors name ``stages.<name>.<key>``."""
    # (the top level's keys as set: a stage naming another optimizer gets that one's defaults, e.g. muon's momentum)
    top = json.loads(config.optimizer.model_dump_json(by_alias=True))
    top = {key: value for key, value in top.items() if key in config.optimizer.model_fields_set}
    data = {"optimizer": {**top, **(stage.optimizer or {})},
            "policy": {**_explicit(config.policy), **(stage.policy or {})}}
    try:
        merged = _StageBlocks.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"stages.{stage.name}.{describe_validation_error(err, data, Config)}") from None
    known = config.optimizer.group_names()
    for group in stage.freeze:
        if group not in known:
            raise ConfigError(f"stages.{stage.name}.freeze: unknown group {group!r}{did_you_mean(group, known)}; "
                              f"groups: {', '.join(known)}")
    if set(known) <= set(stage.freeze):
        raise ConfigError(f"stages.{stage.name}.freeze: freezes every group ({', '.join(known)}); nothing would train")
    return Stage(stage.name, merged.policy, merged.optimizer, stage.epochs, stage.steps, tuple(stage.freeze),
                 stage.dataset.image_size if stage.dataset is not None else None)


def _explicit(policy: "PolicyConfig") -> dict[str, Any]:
    """The top-level policy as the user gave it (so a stage's ``name`` does not inherit
    another policy's defaults by accident)."""
    data = json.loads(policy.model_dump_json(by_alias=True))
    return {key: data[key] for key in policy.model_fields_set if key in data} | {"name": data["name"]}
