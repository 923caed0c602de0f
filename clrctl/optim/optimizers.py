"""Optimizers: torch's SGD (momentum, Nesterov), Adam, AdamW (Loshchilov & Hutter,
arXiv 1711.05101: decoupled weight decay) and RMSprop, built from ``optimizer:``."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from clrctl.config.schema import OptimizerConfig


def build_optimizer(cfg: OptimizerConfig, params: Iterable[Any], lr: float) -> torch.optim.Optimizer:
    """``lr`` is the policy's first LR; the scheduler owns it from then on. ``params`` are
    parameters or param-group dicts (:func:`clrctl.optim.groups.torch_param_groups`), whose LR
    starts at ``lr_mult x lr``."""
    params = [dict(g, lr=lr * g.get("lr_mult", 1.0)) if isinstance(g, dict) else g for g in params]
    fast = _fast_kernels(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **(fast or {"foreach": True}))
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, **fast)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, **fast)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=cfg.momentum, eps=cfg.eps,
                                   weight_decay=cfg.weight_decay)
    raise AssertionError(cfg.name)  # the schema admits only the names above


def _fast_kernels(params: list[Any]) -> dict[str, bool]:
    """``fused=True`` (one kernel for all parameters) where every parameter is on CUDA; on
    the CPU, SGD takes ``foreach=True`` (the same float math as the per-parameter loop, which
    torch picks there by default) and Adam/AdamW keep torch's default."""
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    return {"fused": True} if tensors and all(p.is_cuda for p in tensors) else {}


def has_momentum(cfg: OptimizerConfig) -> bool:
    """Whether the optimizer the user configured has a momentum term to cycle."""
    return cfg.name in ("adam", "adamw") or cfg.momentum > 0


def current_momentum(optimizer: torch.optim.Optimizer) -> float | None:
    group = optimizer.param_groups[0]
    if "betas" in group:
        return float(group["betas"][0])
    return float(group["momentum"]) if "momentum" in group else None
