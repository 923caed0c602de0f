"""The training loss, built from ``train.loss``:

- ``cross_entropy`` (default): torch's ``nn.CrossEntropyLoss`` over class indices, with
  ``train.label_smoothing`` (Szegedy et al. 2016, arXiv 1512.00567). Validation uses the same
  loss, so ``val_loss`` includes the smoothing term: compare such runs by ``val_acc``.
- ``mse``: torch's mean squared error for float regression targets ``(N,)`` or ``(N, k)``; the
  model has ``k`` outputs (``num_classes`` is ``k``). No accuracy is measured: ``val_acc`` and
  ``train_acc`` are blank, the range test's accuracy rules find no signal and its loss rules
  decide, and ``clrctl compare --metric final_val_loss`` judges such runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clrctl.config.schema import TrainConfig
from clrctl.errors import ConfigError


class MSELoss(nn.Module):
    """``F.mse_loss``; a ``(N, 1)`` output against ``(N,)`` targets is compared as ``(N,)``."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.shape != target.shape and output.numel() == target.numel():
            output = output.reshape(target.shape)
        return F.mse_loss(output, target)


def build_loss(cfg: TrainConfig) -> nn.Module:
    if cfg.loss == "mse":
        return MSELoss()
    if cfg.label_smoothing:
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    return nn.CrossEntropyLoss()


def check_targets(cfg: TrainConfig, y: torch.Tensor, dataset: str) -> None:
    """Class labels for cross-entropy, float targets for mse: one line naming ``train.loss``."""
    regression = y.is_floating_point()
    if cfg.loss == "mse" and not regression:
        raise ConfigError(f"train.loss: mse needs float regression targets; dataset {dataset!r} has class labels "
                          "(use train.loss: cross_entropy)")
    if cfg.loss == "cross_entropy" and regression:
        raise ConfigError(f"train.loss: cross_entropy needs class labels; dataset {dataset!r} has float targets "
                          "(use train.loss: mse for a regression)")
