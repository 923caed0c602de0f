"""Schedule-Free SGD and AdamW (Defazio et al. 2024, arXiv 2405.15682; pip ``schedulefree``,
the extra ``clrctl[schedulefree]``).

A Schedule-Free optimizer trains at an interpolation ``y`` of its SGD iterate ``z`` and the
running average ``x``; ``x`` is the model to evaluate and keep. :class:`AveragedWeights` is the
one seam where the rest of clrctl sees ``x``: around an evaluation, the best.pt snapshot and
last.pt's ``model``, it swaps ``x`` in (``optimizer.eval()``), recomputes BatchNorm statistics
on a few training batches for ``x`` (the package README's recipe), and afterwards puts the
training weights and buffers back *as they were, bit for bit* (not ``optimizer.train()``'s
lerp, which rounds): a run trains the same whether and whenever it evaluates or checkpoints,
so resume stays exact (last.pt also holds ``y``: ``train_model``).
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
from torch import nn

# Training batches the averaged weights' BatchNorm statistics are recomputed on (schedulefree's
# README uses 50 on ImageNet; a few suffice for the running averages of small models).
BN_BATCHES = 16


def build(cfg, params: list[Any], lr: float) -> torch.optim.Optimizer:
    """``optimizer.name: schedulefree_sgd | schedulefree_adamw`` in train mode (the step refuses
    an optimizer in eval mode)."""
    import schedulefree  # the extra; build_setup has checked that it is installed

    if cfg.name == "schedulefree_sgd":
        opt = schedulefree.SGDScheduleFree(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = schedulefree.AdamWScheduleFree(params, lr=lr, betas=cfg.betas, eps=cfg.eps,
                                             weight_decay=cfg.weight_decay)
    opt.train()
    return opt


def is_schedule_free(optimizer: Any) -> bool:
    return callable(getattr(optimizer, "eval", None)) and callable(getattr(optimizer, "train", None)) \
        and "train_mode" in optimizer.param_groups[0]


class AveragedWeights:
    """``with averaged(): ...`` — ``model`` holds the averaged weights ``x`` inside, its BatchNorm
    statistics recomputed for them on ``BN_BATCHES`` training batches of ``source`` (epoch 0's
    order: the same batches every time); outside, exactly the training state it had."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, source: Optional[Any] = None):
        self.optimizer, self.model, self.source = optimizer, model, source
        self.has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

    @contextmanager
    def __call__(self) -> Iterator[None]:
        saved = {k: v.detach().clone() for k, v in self.model.state_dict(keep_vars=True).items()}
        modes = [g["train_mode"] for g in self.optimizer.param_groups]
        try:
            self.optimizer.eval()
            if self.has_bn and self.source is not None:
                self._recompute_bn()
            yield
        finally:
            with torch.no_grad():
                for key, value in self.model.state_dict(keep_vars=True).items():
                    value.copy_(saved[key])
            for group, mode in zip(self.optimizer.param_groups, modes):
                group["train_mode"] = mode

    @torch.no_grad()
    def _recompute_bn(self) -> None:
        """torch.optim.swa_utils.update_bn over a few training batches: running statistics reset
        and averaged cumulatively (momentum None) for the weights in the model now."""
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        was_training = self.model.training
        self.model.train()
        for x, _ in itertools.islice(self.source.batches(0), BN_BATCHES):
            self.model(x)
        self.model.train(was_training)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def averaged_weights(optimizer: torch.optim.Optimizer, model: nn.Module, source: Optional[Any] = None):
    """The :class:`AveragedWeights` seam for ``optimizer``, or None when it keeps no average
    (every other optimizer: nothing to do, nothing called)."""
    return AveragedWeights(optimizer, model, source) if is_schedule_free(optimizer) else None
