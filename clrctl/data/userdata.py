"""The user's own data: ``dataset.name: <python.module>:<callable>`` (SPEC "Ecosystem").

The callable (imported from the working directory, like ``model.name: module:callable``)
returns ``(train, val)``, each either

- an ``(x, y)`` pair of tensors: held on the device and batched there, like digits
  (:class:`~clrctl.data.sources.TensorSource`); float features, or uint8 images scaled by 1/255;
- a ``torch.utils.data.Dataset`` of ``(x, y)`` samples: batched by a DataLoader with
  ``dataset.num_workers`` worker processes (:class:`~clrctl.data.sources.LoaderSource`).

Labels are class indices; ``num_classes`` is inferred from them (highest + 1) unless
``dataset.num_classes`` is set. Float labels are regression targets ``(N,)`` or ``(N, k)``
for ``train.loss: mse``: the model gets ``k`` outputs. The input shape comes from the first sample. Everything the
callable gets wrong is one :class:`ConfigError` line naming ``dataset.name``. A callable
that takes a ``seed`` keyword gets the run's seed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from clrctl.config.schema import DatasetConfig
from clrctl.data.sources import Arrays, DataBundle, LoaderSource, TensorSource, check_batches, keep_classes
from clrctl.errors import ConfigError
from clrctl.model.build import USER_ERRORS, _accepts, _describe, _resolve_callable


def build_user_data(cfg: DatasetConfig, seed: int, device: torch.device) -> DataBundle:
    """Call ``cfg.name`` and turn its ``(train, val)`` into batch sources on ``device``."""
    train, val = _call(cfg, seed)
    pairs = [_is_pair(part) for part in (train, val)]
    sets = [isinstance(part, torch.utils.data.Dataset) and not p for part, p in zip((train, val), pairs)]
    if all(pairs):
        return _tensor_data(cfg, seed, device, train, val)
    if all(sets):
        return _dataset_data(cfg, seed, device, train, val)
    kinds = " and ".join(_kind(part) for part in (train, val))
    raise _error(cfg, f"returned {kinds}; expected train and val both (x, y) tensor pairs or both Datasets")


def _call(cfg: DatasetConfig, seed: int) -> tuple[Any, Any]:
    factory = _resolve_callable(cfg.name, "dataset.name")
    kwargs = {"seed": seed} if _accepts(factory, "seed") else {}
    try:
        result = factory(**kwargs)
    except USER_ERRORS as err:  # noqa: BLE001 - user code: report, do not crash
        raise _error(cfg, f"raised {_describe(err)}") from err
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise _error(cfg, f"returned {_kind(result)}; expected a (train, val) pair")
    return result[0], result[1]


def _error(cfg: DatasetConfig, what: str) -> ConfigError:
    return ConfigError(f"dataset.name: {cfg.name!r} {what}")


def _is_pair(part: Any) -> bool:
    return isinstance(part, (tuple, list)) and len(part) == 2 and all(isinstance(t, Tensor) for t in part)


def _kind(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        inner = ", ".join(type(v).__name__ for v in value[:3]) + (", ..." if len(value) > 3 else "")
        return f"a {type(value).__name__} of ({inner})"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------------------------------
# (x, y) tensors: on the device


def _tensor_data(cfg: DatasetConfig, seed: int, device: torch.device, train, val) -> DataBundle:
    (x, y), (val_x, val_y) = (_checked_pair(cfg, name, *part) for name, part in (("train", train), ("val", val)))
    if x.shape[1:] != val_x.shape[1:]:
        raise _error(cfg, f"returned train samples of shape {tuple(x.shape[1:])} but val samples of shape "
                          f"{tuple(val_x.shape[1:])}")
    if x.dtype != val_x.dtype:
        raise _error(cfg, f"returned train x of {x.dtype} but val x of {val_x.dtype}")
    _same_label_kind(cfg, y, val_y)
    if y.is_floating_point():  # regression targets: one output per target column
        if cfg.classes is not None:
            raise ConfigError("dataset.classes: needs class labels; the data have float (regression) targets")
        outputs = 1 if y.dim() == 1 else y.shape[1]
        source = TensorSource(x, y, cfg.batch_size, device, shuffle=True, augment=cfg.augment, seed=seed,
                              eval_batch_size=cfg.eval_batch_size, drop_last=cfg.drop_last)
        check_batches(source, cfg)
        val_source = TensorSource(val_x, val_y, cfg.eval_batch_size, device)
        return DataBundle(source, val_source, tuple(x.shape[1:]), outputs, cfg.name)
    arrays = Arrays(x, y, val_x, val_y, _num_classes(cfg, torch.cat([y, val_y])))
    if cfg.classes is not None:
        arrays = keep_classes(arrays, cfg.classes)
    if cfg.augment and arrays.x.dim() != 4:
        raise ConfigError(f"dataset.augment: random crop and flip need images (N, C, H, W); "
                          f"{cfg.name!r} has samples of shape {tuple(arrays.x.shape[1:])}")
    source = TensorSource(arrays.x, arrays.y, cfg.batch_size, device, shuffle=True, augment=cfg.augment, seed=seed,
                          eval_batch_size=cfg.eval_batch_size, drop_last=cfg.drop_last)
    check_batches(source, cfg)
    val_source = TensorSource(arrays.val_x, arrays.val_y, cfg.eval_batch_size, device)
    return DataBundle(source, val_source, tuple(arrays.x.shape[1:]), arrays.num_classes, cfg.name)


def _same_label_kind(cfg: DatasetConfig, y: Tensor, val_y: Tensor) -> None:
    if y.is_floating_point() != val_y.is_floating_point() or (y.is_floating_point() and y.shape[1:] != val_y.shape[1:]):
        raise _error(cfg, f"mixes label types: train labels of {y.dtype} {tuple(y.shape[1:])}, val labels of "
                          f"{val_y.dtype} {tuple(val_y.shape[1:])}; expected class indices in both, or float "
                          "regression targets in both")


def _checked_pair(cfg: DatasetConfig, name: str, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    regression = y.dtype.is_floating_point
    if x.dim() < 2 or y.dim() not in ((1, 2) if regression else (1,)) or len(x) != len(y) or len(y) == 0:
        raise _error(cfg, f"returned {name} x of shape {tuple(x.shape)} and y of shape {tuple(y.shape)}; "
                          "expected x (N, ...) and class labels y (N,) or float targets (N,) / (N, k), with N > 0")
    if y.dtype.is_complex or y.dtype == torch.bool:
        raise _error(cfg, f"returned {name} labels of {y.dtype}; expected integer class indices or float targets")
    if regression:
        return x.detach().cpu().float() if not x.dtype.is_floating_point and x.dtype != torch.uint8 \
            else x.detach().cpu(), y.detach().cpu().float()
    if int(y.min()) < 0:
        raise _error(cfg, f"returned a negative {name} label ({int(y.min())}); expected class indices 0..C-1")
    if x.dtype != torch.uint8 and not x.dtype.is_floating_point:
        x = x.float()
    return x.detach().cpu(), y.detach().cpu().to(torch.int64)


def _num_classes(cfg: DatasetConfig, labels: Tensor) -> int:
    """``dataset.num_classes`` when set (labels must fit), else the highest label + 1."""
    highest = int(labels.max())
    if "num_classes" in cfg.model_fields_set:
        if highest >= cfg.num_classes:
            raise ConfigError(f"dataset.num_classes: {cfg.num_classes}, but {cfg.name!r} has label {highest}")
        return cfg.num_classes
    if highest < 1:
        raise _error(cfg, "returned one class only (every label is 0); a classifier needs two or more")
    return highest + 1


# ---------------------------------------------------------------------------------------
# Datasets: through a DataLoader with workers


def _dataset_data(cfg: DatasetConfig, seed: int, device: torch.device, train, val) -> DataBundle:
    if cfg.classes is not None:
        raise ConfigError("dataset.classes: not available for Dataset data; return only those classes instead")
    shapes = [_first_sample(cfg, name, part) for name, part in (("train", train), ("val", val))]
    if shapes[0] != shapes[1]:
        raise _error(cfg, f"returned train samples of shape {shapes[0]} but val samples of shape {shapes[1]}")
    if cfg.augment and len(shapes[0]) != 3:
        raise ConfigError(f"dataset.augment: random crop and flip need images (C, H, W); "
                          f"{cfg.name!r} has samples of shape {shapes[0]}")
    num_classes = _num_classes(cfg, torch.cat([_labels(cfg, "train", train), _labels(cfg, "val", val)]))
    common = dict(eval_batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers)
    source = LoaderSource(train, cfg.batch_size, device, shuffle=True, augment=cfg.augment, seed=seed,
                          drop_last=cfg.drop_last, **common)
    check_batches(source, cfg)
    val_source = LoaderSource(val, cfg.eval_batch_size, device, **common)
    return DataBundle(source, val_source, shapes[0], num_classes, cfg.name)


def _first_sample(cfg: DatasetConfig, name: str, dataset) -> tuple[int, ...]:
    try:
        size = len(dataset)
    except TypeError:
        raise _error(cfg, f"returned a {name} Dataset without a length; expected a map-style Dataset") from None
    if size == 0:
        raise _error(cfg, f"returned an empty {name} Dataset")
    try:
        sample = dataset[0]
    except USER_ERRORS as err:  # noqa: BLE001 - user code
        raise _error(cfg, f"{name} Dataset raised {_describe(err)} on its first sample") from err
    if not isinstance(sample, (tuple, list)) or len(sample) != 2 or not isinstance(sample[0], Tensor):
        raise _error(cfg, f"{name} Dataset yields {_kind(sample)}; expected (x tensor, label) samples")
    return tuple(sample[0].shape)


def _labels(cfg: DatasetConfig, name: str, dataset) -> Tensor:
    """Every label of ``dataset``: from ``targets`` or a TensorDataset when there, else read
    sample by sample (set ``dataset.num_classes`` to skip this where samples are costly)."""
    if "num_classes" in cfg.model_fields_set:
        labels: Any = [0]  # nothing to infer; the loader checks each batch's labels on use
    elif isinstance(dataset, torch.utils.data.TensorDataset):
        labels = dataset.tensors[1]
    elif getattr(dataset, "targets", None) is not None:
        labels = dataset.targets
    else:
        labels = [dataset[i][1] for i in range(len(dataset))]
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise _error(cfg, f"{name} Dataset yields labels that are not numbers") from None
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1:
        raise _error(cfg, f"{name} Dataset yields labels of {labels.dtype}, shape {tuple(labels.shape[1:])}; "
                          "expected integer class indices")
    if int(labels.min()) < 0:
        raise _error(cfg, f"{name} Dataset yields a negative label ({int(labels.min())})")
    return labels.to(torch.int64)
