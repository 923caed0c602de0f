"""The Python API for notebooks: ``from clrctl import lr_find, train``.

:func:`lr_find` runs the LR range test of ``clrctl range-test`` (the same sweep, stop rules
and suggestion rules: :mod:`clrctl.rangetest.sweep`, :mod:`clrctl.rangetest.suggest`) on the caller's own
``nn.Module`` and data, as torch-lr-finder and fastai's ``lr_find`` do. The sweep trains a
deep copy under a forked RNG, so the model's weights, its train/eval mode and the global
RNG are as they were. :func:`train` runs a config as ``clrctl train`` does.

Range-test settings not given here take their defaults from the config schema
(:class:`clrctl.config.schema.RangeTestConfig`); only ``mode`` defaults to ``exp``, as the peers do.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from clrctl.rangetest import sweep as rt
from clrctl.config.schema import Config, load_config, validate
from clrctl.data.sources import BatchSource, DataBundle, LoaderSource, TensorSource
from clrctl.errors import ConfigError
from clrctl.optim.groups import split_muon
from clrctl.optim.optimizers import build_optimizer
from clrctl.engine.setup import assemble

RECORD_COLUMNS = ("step", "epoch", "lr", "momentum", "loss", "smoothed_loss", "val_loss", "val_acc")


@dataclass
class LRFinderResult:
    """What :func:`lr_find` found: the suggestion (the CLI's ``summary.json["suggestion"]``),
    the per-step records and how the sweep ended."""

    suggestion: dict[str, Any]
    rows: list[dict[str, Any]]  # one dict per step, as metrics.csv holds them
    steps: int
    planned_steps: int
    stop_reason: Optional[str]  # "non-finite loss" | "diverged" | "interrupted" | None
    log_x: bool = True
    records: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        # One float array per metrics.csv column; NaN where a step has no value (no evaluation).
        self.records = {key: np.array([np.nan if r.get(key) is None else float(r[key]) for r in self.rows],
                                      dtype=float) for key in RECORD_COLUMNS}

    @property
    def base_lr(self) -> Optional[float]:
        return self.suggestion["base_lr"]

    @property
    def max_lr(self) -> Optional[float]:
        return self.suggestion["max_lr"]

    def plot(self, ax=None):
        """Loss (and, with validation data, accuracy) against the LR with the suggestion
        shaded; drawn on ``ax`` when given (loss only). Returns the matplotlib Figure."""
        from clrctl.plots.range_test import range_test_figure
        from clrctl.rangetest.suggest import loss_analysis

        curve = rt.columns(self.rows)
        curve["zero_phase"] = loss_analysis(curve["lr"], curve["loss"])["smooth"]
        return range_test_figure([{**curve, "label": "lr_find"}], self.base_lr, self.max_lr, rt.plot_markers(self.suggestion),
                                 log_x=self.log_x, title="lr_find", ax=ax, pyplot=True)

    def to_config(self, policy: str = "triangular2") -> dict[str, Any]:
        """A ``policy:`` block with the suggested bounds, e.g. ``{"name": "triangular2",
        "bounds": [0.01, 0.04]}``; raises ConfigError when the rules found none (and why)."""
        if self.base_lr is None or self.max_lr is None:
            raise ConfigError(f"lr_find: no suggested bounds ({self.suggestion['reason']})")
        return {"name": policy, "bounds": [float(f"{self.base_lr:.4g}"), float(f"{self.max_lr:.4g}")]}


def lr_find(model: nn.Module, data: Any, *, loss_fn: Optional[Callable] = None,
            optimizer: Any = None, start_lr: Optional[float] = None, end_lr: Optional[float] = None,
            mode: str = "exp", steps: Union[int, str, None] = None, device: Any = None,
            batch_size: Optional[int] = None, seed: int = 0, **range_test: Any) -> LRFinderResult:
    """The LR range test on ``model`` (left unchanged) and ``data``:

    - a ``DataLoader`` (its own batches), an ``(x, y)`` pair of tensors or a ``Dataset``
      (batched by ``batch_size``, shuffled by ``seed``): the loss rules decide;
    - a ``(train, val)`` pair of those: the accuracy rules (Smith §3.3) decide as well.

    ``optimizer``: None (the schema's default, plain SGD), an ``optimizer:`` block
    (``"adam"`` or ``{"name": "sgd", "momentum": 0.9}``), a torch optimizer over ``model``
    (its class and hyper-parameters are used on the copy; its state is not touched), or a
    callable ``params -> Optimizer`` (e.g. ``functools.partial(torch.optim.AdamW, weight_decay=0.05)``).
    ``steps`` is a number of steps or ``"N epochs"``; other ``range_test:`` keys
    (``eval_every``, ``eval_size``, ``smoothing``, ``diverge_factor``) may be given too.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"lr_find: model must be a torch.nn.Module (got {type(model).__name__})")
    block = {"mode": mode, "start_lr": start_lr, "end_lr": end_lr, "steps": steps, **range_test}
    config = _config({"range_test": {k: v for k, v in block.items() if v is not None},
                      **({"dataset": {"batch_size": batch_size}} if batch_size else {})}, "lr_find")
    dev = torch.device(device) if device is not None else _model_device(model)
    data_bundle = _bundle(data, config, dev, seed)
    moved = model if _model_device(model) == dev else _copy_to(model, dev)
    setup = assemble(config, seed, dev, data_bundle, moved, groups=[], checked=False,
                     loss_fn=loss_fn if loss_fn is not None else nn.CrossEntropyLoss())
    sweep_setup = rt.SweepSetup.of(setup, setup.stages[0], rt.resolve_steps(config.range_test.steps, len(data_bundle.train)))
    make = _optimizer_factory(optimizer, model, config.range_test.start_lr)
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # a shuffling DataLoader draws from the global RNG
        result = rt.sweep(sweep_setup, make_optimizer=make)
    if not result.rows:
        raise ConfigError("lr_find: the sweep made no step (interrupted before its first batch)")
    eval_size = min(config.range_test.eval_size, data_bundle.val.num_samples) if data_bundle.val else 0
    suggestion = rt.suggest_from_rows(result.rows, sweep_setup.steps, eval_size)
    return LRFinderResult(suggestion, result.rows, result.steps, result.planned_steps, result.stop_reason,
                          log_x=config.range_test.mode == "exp")


def train(config: Union[str, Path, dict, Config], *, runs_root: Union[str, Path] = "runs",
          run_dir: Union[str, Path, None] = None, **overrides: Any) -> tuple[Path, dict[str, Any]]:
    """Train a config (a YAML path, a dict or a :class:`Config`) as ``clrctl train`` does, in a
    new run directory under ``runs_root``; returns (run path, summary).

    ``overrides`` are the CLI's ``key.path=value`` overrides as keywords: a dotted key in a
    ``**{"train.epochs": 2}`` mapping, or ``__`` for the dots (``train__epochs=2``)."""
    from clrctl.runs.training import start_training

    return start_training(_load(config, overrides), runs_root=runs_root, run_dir=run_dir)


# ---------------------------------------------------------------------------------------
# Helpers


def _config(data: dict[str, Any], source: str) -> Config:
    config = validate(data, source)
    config._written = data
    return config


def _load(config: Union[str, Path, dict, Config], overrides: dict[str, Any]) -> Config:
    """The validated config with ``overrides`` applied (as YAML values, like the CLI's)."""
    import yaml

    from clrctl.config.schema import apply_override

    items = [f"{key.replace('__', '.')}={yaml.safe_dump(value, default_flow_style=True).strip()}"
             .removesuffix("\n...") for key, value in overrides.items()]
    if isinstance(config, (str, Path)):
        return load_config(config, items)
    if isinstance(config, Config):
        data = copy.deepcopy(config.as_written())
    elif isinstance(config, dict):
        data = copy.deepcopy(config)
    else:
        raise ConfigError(f"train: expected a config path, dict or Config (got {type(config).__name__})")
    for item in items:
        apply_override(data, item)
    return _config(data, "train")


def _model_device(model: nn.Module) -> torch.device:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def _copy_to(model: nn.Module, device: torch.device) -> nn.Module:
    return copy.deepcopy(model).to(device)


def _optimizer_factory(optimizer: Any, model: nn.Module, lr: float) -> Callable[[nn.Module], torch.optim.Optimizer]:
    """``copy -> optimizer`` for the swept copy of ``model``; every group gets an ``lr_mult``
    (relative to the first group's LR, for a given torch optimizer)."""
    if optimizer is None or isinstance(optimizer, (str, dict)):
        block = {"name": optimizer} if isinstance(optimizer, str) else (optimizer or {})
        cfg = _config({"optimizer": block}, "lr_find").optimizer
        def make_from(clone: nn.Module) -> torch.optim.Optimizer:
            params = [{"params": list(clone.parameters()), "lr_mult": 1.0}]
            return build_optimizer(cfg, split_muon(params, clone) if cfg.name == "muon" else params, lr)

        return make_from
    if isinstance(optimizer, torch.optim.Optimizer):
        return _like(optimizer, model)
    if callable(optimizer):
        def make(clone: nn.Module) -> torch.optim.Optimizer:
            built = optimizer(clone.parameters())
            if not isinstance(built, torch.optim.Optimizer):
                raise ConfigError(f"lr_find: optimizer returned a {type(built).__name__}, not a torch optimizer")
            for group in built.param_groups:
                group.setdefault("lr_mult", 1.0)
            return built
        return make
    raise ConfigError(f"lr_find: optimizer must be None, a name, an optimizer: block, a torch optimizer "
                      f"or a callable (got {type(optimizer).__name__})")


def _like(optimizer: torch.optim.Optimizer, model: nn.Module) -> Callable[[nn.Module], torch.optim.Optimizer]:
    """The same optimizer class and groups, over the copy's matching parameters."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    first_lr = optimizer.param_groups[0]["lr"] or 1.0

    def make(clone: nn.Module) -> torch.optim.Optimizer:
        params = list(clone.parameters())
        groups = []
        for group in optimizer.param_groups:
            missing = [p for p in group["params"] if id(p) not in index]
            if missing:
                raise ConfigError("lr_find: the optimizer holds parameters that are not the model's")
            settings = {k: v for k, v in group.items() if k != "params"}
            settings["lr_mult"] = group["lr"] / first_lr
            groups.append({**settings, "params": [params[index[id(p)]] for p in group["params"]]})
        return type(optimizer)(groups, **optimizer.defaults)

    return make


def _bundle(data: Any, config: Config, device: torch.device, seed: int) -> DataBundle:
    """The user's data as train / (optional) validation batch sources."""
    if _is_pair_of_sources(data):
        train, val = data
        return DataBundle(_source(train, config, device, seed, shuffle=True),
                          _source(val, config, device, seed, shuffle=False), (), 0, "lr_find")
    return DataBundle(_source(data, config, device, seed, shuffle=True), None, (), 0, "lr_find")


def _is_tensor_pair(data: Any) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)


def _is_pair_of_sources(data: Any) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and not _is_tensor_pair(data)


def _source(data: Any, config: Config, device: torch.device, seed: int, *, shuffle: bool) -> BatchSource:
    cfg = config.dataset
    if isinstance(data, torch.utils.data.DataLoader):
        return _UserLoader(data, device)
    if _is_tensor_pair(data):
        x, y = data
        if len(x) != len(y) or len(y) == 0:
            raise ConfigError(f"lr_find: x and y must hold the same, non-zero number of samples "
                              f"(got {len(x)} and {len(y)})")
        return TensorSource(x, y, cfg.batch_size, device, shuffle=shuffle, seed=seed,
                            eval_batch_size=cfg.eval_batch_size)
    if isinstance(data, torch.utils.data.Dataset):
        return LoaderSource(data, cfg.batch_size, device, shuffle=shuffle, seed=seed,
                            eval_batch_size=cfg.eval_batch_size)
    raise ConfigError(f"lr_find: data must be a DataLoader, an (x, y) pair of tensors, a Dataset, or a "
                      f"(train, val) pair of those (got {type(data).__name__})")


class _UserLoader(BatchSource):
    """The caller's own ``DataLoader`` (its batching, shuffling and workers), batches moved to
    the device; ``head`` keeps the first samples as tensors for a fixed evaluation slice."""

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device
        self.batch_size = loader.batch_size or 1
        try:
            self._batches = len(loader)
        except TypeError:  # an iterable-style data set without a length
            raise ConfigError("lr_find: the DataLoader has no length; give steps= and a sized data set") from None
        if self._batches == 0:
            raise ConfigError("lr_find: the DataLoader yields no batch")
        self.num_samples = len(loader.dataset) if hasattr(loader.dataset, "__len__") else self._batches * self.batch_size

    def __len__(self) -> int:
        return self._batches

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in itertools.islice(self.loader, start, None):
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def head(self, n: int) -> BatchSource:
        xs, ys, seen = [], [], 0
        for x, y in self.loader:
            xs.append(x)
            ys.append(y)
            seen += len(y)
            if seen >= n:
                break
        x, y = torch.cat(xs)[:n], torch.cat(ys)[:n]
        return TensorSource(x, y, max(self.batch_size, 1), self.device)
