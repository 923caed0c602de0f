"""The config schema: YAML -> a validated, typed :class:`Config`.

Every default of clrctl is defined here, once. Unknown keys are errors that name the key
(with a "did you mean"), and every validation failure becomes one :class:`ConfigError` line
of the form ``<dotted.key>: <what was expected>``. Durations such as ``stepsize`` accept an
integer number of optimizer steps or ``"N epochs"``; they are resolved to steps by
:func:`resolve_steps` once the data set (and so the steps per epoch) is known.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clrctl.errors import ConfigError

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder", "synthetic")
BUILTIN_MODELS = ("mlp", "lenet", "resnet20", "resnet56")
POLICIES = ("fixed", "triangular", "triangular2", "exp_range", "one_cycle", "cosine", "sgdr", "step")
CYCLIC_POLICIES = ("triangular", "triangular2", "exp_range")
TARGET_METRICS = ("val_acc", "val_loss")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(steps?|epochs?)\s*$")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

# A duration: optimizer steps (int) or "N epochs" / "N steps".
Duration = Union[int, str]


def _check_duration(value: Duration) -> Duration:
    if isinstance(value, bool):
        raise ValueError("expected a number of steps or 'N epochs'")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"must be positive (got {value})")
        return value
    if isinstance(value, float):
        raise ValueError(f"expected an integer number of steps or 'N epochs' (got {value})")
    match = _DURATION_RE.match(str(value))
    if not match:
        raise ValueError(f"expected an integer number of steps or 'N epochs' (got {value!r})")
    if float(match.group(1)) <= 0:
        raise ValueError(f"must be positive (got {value!r})")
    return value


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
    name: Literal[DATASETS] = "digits"  # type: ignore[valid-type]
    batch_size: int = Field(32, gt=0)
    val_fraction: float = Field(0.25, gt=0.0, lt=1.0)  # for data sets without an official split
    root: str = "data"  # where torchvision / imagefolder data live
    download: bool = False  # let torchvision fetch the data when a network is there
    augment: bool = False  # random crop (pad 4) + horizontal flip, done on the device
    eval_batch_size: int = Field(1024, gt=0)
    # synthetic: a seeded, learnable task of any size
    num_samples: int = Field(2048, gt=1)
    num_features: int = Field(32, gt=0)
    num_classes: int = Field(10, gt=1)
    # imagefolder: images are resized to image_size x image_size; loaded by worker processes
    image_size: int = Field(32, gt=0)
    num_workers: int = Field(2, ge=0)


class ModelConfig(_Section):
    name: str = "mlp"  # mlp | lenet | resnet20 | resnet56 | torchvision:<name> | module:callable
    hidden: list[int] = [64, 64]  # mlp hidden sizes
    args: dict[str, Any] = {}  # extra keyword arguments for torchvision or user models

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if name in BUILTIN_MODELS or ":" in name:
            module, _, attr = name.partition(":")
            if ":" in name and (not module or not attr):
                raise ValueError(f"expected 'torchvision:<name>' or 'module:callable' (got {name!r})")
            return name
        hint = _did_you_mean(name, BUILTIN_MODELS)
        raise ValueError(
            f"unknown model {name!r}{hint}; expected one of {', '.join(BUILTIN_MODELS)}, "
            "torchvision:<name> or module:callable"
        )

    @field_validator("hidden")
    @classmethod
    def _positive_sizes(cls, hidden: list[int]) -> list[int]:
        if any(h <= 0 for h in hidden):
            raise ValueError(f"hidden sizes must be positive (got {hidden})")
        return hidden


class OptimizerConfig(_Section):
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    momentum: float = Field(0.0, ge=0.0, lt=1.0)  # sgd / rmsprop; torch's default is 0
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)  # adam / adamw
    eps: float = Field(1e-8, gt=0.0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "OptimizerConfig":
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            raise ValueError("nesterov: needs optimizer.name: sgd and momentum > 0")
        return self


class BoundsFrom(_Section):
    """``bounds: {from: runs/<range-test run>}`` — take the bounds a range test suggested."""

    from_: str = Field(alias="from")
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# Per-policy defaults of ``gamma``: the paper's exp_range value, torch MultiStepLR's usual 0.1.
GAMMA_DEFAULTS = {"exp_range": 0.99994, "step": 0.1}
# 1cycle's default momentum range (1803.09820; torch OneCycleLR base/max momentum).
ONE_CYCLE_MOMENTUM = (0.85, 0.95)


class PolicyConfig(_Section):
    name: Literal[POLICIES] = "fixed"  # type: ignore[valid-type]
    bounds: Optional[Union[tuple[float, float], BoundsFrom]] = None  # [base_lr, max_lr]
    lr: Optional[float] = Field(None, gt=0.0)  # fixed / step: the starting LR
    stepsize: Duration = "2 epochs"  # half a cycle (CLR); T_0 for sgdr
    gamma: Optional[float] = Field(None, gt=0.0)  # exp_range: per step; step: factor per milestone
    momentum: Optional[tuple[float, float]] = None  # [low, high], cycled inversely to the LR
    milestones: list[Duration] = []  # step: when to multiply by gamma
    t_mult: int = Field(1, ge=1)  # sgdr: cycle length multiplier
    pct_start: float = Field(0.3, gt=0.0, lt=1.0)  # one_cycle: share of the run spent rising
    final_div: float = Field(1e4, gt=0.0)  # one_cycle: final LR = base_lr / final_div
    anneal: Literal["cos", "linear"] = "cos"  # one_cycle
    three_phase: bool = False  # one_cycle: the paper's 3-phase form

    @field_validator("stepsize")
    @classmethod
    def _stepsize(cls, value: Duration) -> Duration:
        return _check_duration(value)

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, values: list[Duration]) -> list[Duration]:
        return [_check_duration(v) for v in values]

    @field_validator("bounds")
    @classmethod
    def _ordered_bounds(cls, bounds):
        if isinstance(bounds, tuple):
            base, high = bounds
            if not (math.isfinite(base) and math.isfinite(high)) or base <= 0:
                raise ValueError(f"learning rates must be positive and finite (got {list(bounds)})")
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
        if self.name == "step" and not self.milestones:
            raise ValueError("milestones: policy 'step' needs milestones (steps or 'N epochs')")
        return self

    @property
    def effective_gamma(self) -> float:
        return self.gamma if self.gamma is not None else GAMMA_DEFAULTS.get(self.name, 1.0)

    @property
    def base_lr(self) -> float:
        return self.bounds[0] if isinstance(self.bounds, tuple) else self.lr  # type: ignore[index]

    @property
    def max_lr(self) -> float:
        return self.bounds[1] if isinstance(self.bounds, tuple) else self.lr  # type: ignore[index]


class TrainConfig(_Section):
    epochs: Optional[int] = Field(None, gt=0)  # default 8 when neither epochs nor steps is set
    steps: Optional[int] = Field(None, gt=0)
    target: Optional[dict[str, float]] = None  # e.g. {val_acc: 0.97}: record steps_to_target
    eval_every: Optional[int] = Field(None, gt=0)  # steps between evaluations; default: per epoch
    log_every: int = Field(25, gt=0)  # steps between host syncs for loss logging / progress
    skip_nonfinite: bool = False  # skip batches with NaN/Inf loss instead of stopping
    amp: bool = False  # mixed precision on CUDA (ignored elsewhere)

    @model_validator(mode="after")
    def _one_length(self) -> "TrainConfig":
        if self.epochs is not None and self.steps is not None:
            raise ValueError("epochs: give train.epochs or train.steps, not both (on the command line: train.epochs=null train.steps=N)")
        if self.epochs is None and self.steps is None:
            self.epochs = 8
        return self

    @field_validator("target")
    @classmethod
    def _target_metric(cls, target):
        if target is not None and len(target) != 1:
            raise ValueError(f"expected one metric and its threshold, e.g. {{val_acc: 0.97}} (got {target})")
        for metric in target or {}:
            if metric not in TARGET_METRICS:
                raise ValueError(f"unknown target metric {metric!r}; expected one of {', '.join(TARGET_METRICS)}")
        return target


class RangeTestConfig(_Section):
    start_lr: float = Field(1e-4, gt=0.0)
    end_lr: float = Field(1.0, gt=0.0)
    mode: Literal["linear", "exp"] = "linear"  # linear: the paper; exp: fastai / torch-lr-finder
    steps: Duration = "8 epochs"
    eval_every: int = Field(10, gt=0)  # accuracy on a fixed held-out slice every N steps
    eval_size: int = Field(512, gt=0)  # size of that fixed slice
    smoothing: float = Field(0.98, ge=0.0, lt=1.0)  # EMA factor of the (debiased) smoothed loss
    diverge_factor: float = Field(4.0, gt=1.0)  # stop when smoothed loss passes this x its best

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: Duration) -> Duration:
        return _check_duration(value)

    @model_validator(mode="after")
    def _ordered(self) -> "RangeTestConfig":
        if self.start_lr >= self.end_lr:
            raise ValueError(f"start_lr: must be < end_lr (got {self.start_lr} >= {self.end_lr})")
        return self


class SweepConfig(_Section):
    """``sweep:`` — a grid committed with its config; ``clrctl sweep`` reads it, ``train`` ignores it."""

    grid: dict[str, list[Any]] = {}  # dotted key -> values; the points are their Cartesian product
    include: list[dict[str, Any]] = []  # extra points ({dotted key: value}), e.g. a fixed-LR baseline
    seeds: Optional[Union[int, str, list[int]]] = None  # as --seeds: 3, "0..4" or [0, 1, 2]

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"{key}: needs at least one value")
        return grid


class Config(_Section):
    name: str = "run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps   (auto: cuda > mps > cpu)
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    policy: PolicyConfig = PolicyConfig(lr=0.01)
    train: TrainConfig = TrainConfig()
    range_test: RangeTestConfig = RangeTestConfig()
    sweep: Optional[SweepConfig] = Field(None, exclude=True)  # not part of a run's config.yaml

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not _DEVICE_RE.match(device):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps (got {device!r})")
        return device

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise ValueError(f"use letters, digits, '-', '_' or '.' only (got {name!r})")
        return name

    def to_dict(self) -> dict[str, Any]:
        """Plain data for config.yaml (``bounds.from`` keeps its YAML spelling)."""
        return json.loads(self.model_dump_json(by_alias=True))


# ---------------------------------------------------------------------------------------
# Loading: file -> dict -> overrides -> validated Config


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read ``path``, apply Hydra-style ``a.b=value`` overrides, and validate."""
    data = read_yaml(path)
    for override in overrides:
        apply_override(data, override)
    return validate(data, source=str(path))


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "cannot parse"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    if data is None:
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
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"override {override!r}: cannot parse the value as YAML") from None
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def validate(data: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, data)) from None


def describe_validation_error(err: ValidationError, data: dict[str, Any]) -> str:
    """One line: the first problem, naming the dotted key and what was expected."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"] if not _is_union_branch(p)]
    key = ".".join(loc) or "config"
    kind = first["type"]
    if kind == "extra_forbidden":
        hint = _did_you_mean(loc[-1], _known_keys(loc[:-1]))
        return f"{key}: unknown key{hint}"
    msg = first["msg"]
    msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)
    # Model-level validators start their message with the key they are about.
    field_msg = re.match(r"^([a-z_]+): (.*)$", msg)
    if field_msg and field_msg.group(1) in _known_keys(loc):
        key = ".".join(loc + [field_msg.group(1)])
        msg = field_msg.group(2)
    if kind in ("missing",):
        msg = "required key is missing"
    if key == "policy.bounds" and kind in ("tuple_type", "too_short", "too_long", "float_parsing", "float_type"):
        msg = "expected [base_lr, max_lr] or {from: <range-test run>}"
    given = first.get("input")
    if "got" not in msg and kind != "missing" and not isinstance(given, (dict, list)):
        msg = f"{msg} (got {given!r})"
    return f"{key}: {msg}"


def _is_union_branch(part: Any) -> bool:
    # pydantic names union branches in the location, e.g. 'tuple[float, float]' or 'BoundsFrom'.
    text = str(part)
    return "[" in text or text in ("BoundsFrom", "int", "str", "function-after[_check_duration()]")


def _known_keys(loc: list[str]) -> list[str]:
    model: Any = Config
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        model = next(
            (a for a in (getattr(annotation, "__args__", None) or (annotation,)) if hasattr(a, "model_fields")),
            None,
        )
        if model is None:
            return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def resolve_bounds_from(config: Config) -> Config:
    """Replace ``policy.bounds: {from: RUN}`` by the bounds that range-test run suggested."""
    bounds = config.policy.bounds
    if not isinstance(bounds, BoundsFrom):
        return config
    run = Path(bounds.from_)
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise ConfigError(f"policy.bounds.from: {run} is not a finished run (no summary.json)")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"policy.bounds.from: cannot read {summary_path}") from None
    suggestion = summary.get("suggestion") or {}
    base, high = suggestion.get("base_lr"), suggestion.get("max_lr")
    if summary.get("status") != "completed" or base is None or high is None:
        raise ConfigError(f"policy.bounds.from: {run} has no suggested bounds (not a completed range test?)")
    data = config.to_dict()
    data["policy"]["bounds"] = [float(base), float(high)]
    return validate(data)
