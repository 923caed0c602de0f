"""The training loss, built from ``train:``: torch's cross-entropy, with label smoothing
(Szegedy et al. 2016, arXiv 1512.00567; ``nn.CrossEntropyLoss(label_smoothing=eps)``).

Validation uses the same loss, so ``val_loss`` includes the smoothing term: a run with
``label_smoothing`` has a higher loss floor than one without, and compares by ``val_acc``."""

from __future__ import annotations

from torch import nn

from clrctl.config import TrainConfig


def build_loss(cfg: TrainConfig) -> nn.Module:
    if cfg.label_smoothing:
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    return nn.CrossEntropyLoss()
