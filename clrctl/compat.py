"""Compatibility shims for the environments clrctl meets."""

from __future__ import annotations

import importlib.util
from typing import Optional

import torch

from clrctl.errors import ConfigError

TENSORBOARD_INSTALL = "pip install 'clrctl[tensorboard]'"
SCHEDULEFREE_INSTALL = "pip install 'clrctl[schedulefree]'"

# Keeps the stand-in op schemas registered (a Library unregisters them when collected).
_TORCHVISION_OPS_STUB: Optional[torch.library.Library] = None


def import_torchvision():
    """``import torchvision``, tolerating a build whose C++ ops do not load with this torch.

    A CUDA torchvision wheel next to a CPU torch wheel of the same release (what pip picks
    from PyPI next to a ``+cpu`` torch) cannot load ``torchvision/_C.so``; torchvision then
    fails at import, registering fake kernels for ``torchvision::nms``/``qnms``. Defining
    those two schemas lets the pure-Python parts (datasets, transforms, models) import;
    the C++ ops (``torchvision.ops.nms`` ...) still raise torchvision's own clear error.
    """
    global _TORCHVISION_OPS_STUB
    try:
        import torchvision
    except RuntimeError as err:
        if "torchvision::" not in str(err) or _TORCHVISION_OPS_STUB is not None:
            raise
        _TORCHVISION_OPS_STUB = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            _TORCHVISION_OPS_STUB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision
    return torchvision


def require_tensorboard(key: str = "train.tensorboard") -> None:
    """One line and exit 2 when the ``tensorboard`` package is missing (before any run directory)."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(f"{key}: the tensorboard package is not installed; install it with: {TENSORBOARD_INSTALL}")


def require_schedulefree(key: str = "optimizer.name") -> None:
    """One line and exit 2 when the ``schedulefree`` package is missing (before any run directory)."""
    if importlib.util.find_spec("schedulefree") is None:
        raise ConfigError(f"{key}: the schedulefree package is not installed; install it with: {SCHEDULEFREE_INSTALL}")
