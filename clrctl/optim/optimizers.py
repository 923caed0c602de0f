"""Optimizers: torch's SGD (momentum, Nesterov), Adam, AdamW (Loshchilov & Hutter,
arXiv 1711.05101: decoupled weight decay) and RMSprop, built from ``optimizer:``; beside them
Schedule-Free SGD/AdamW (:mod:`clrctl.optim.schedulefree`) and Muon with AdamW
(:mod:`clrctl.optim.muon`)."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from clrctl.config.schema import SCHEDULE_FREE, OptimizerConfig


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
    if cfg.name in SCHEDULE_FREE:
        from clrctl.optim import schedulefree

        return schedulefree.build(cfg, params, lr)
    if cfg.name == "muon":  # groups marked muon: True/False by torch_param_groups (plain parameters: AdamW)
        from clrctl.optim.muon import MuonAdamW

        groups = [g if isinstance(g, dict) else {"params": [g]} for g in params]
        return MuonAdamW(groups, lr, cfg.momentum, cfg.betas, cfg.eps, cfg.weight_decay, fast)
    raise AssertionError(cfg.name)  # the schema admits only the names above


def _fast_kernels(params: list[Any]) -> dict[str, bool]:
    """``fused=True`` (one kernel for all parameters) where every parameter is on CUDA; on
    the CPU, SGD takes ``foreach=True`` (the same float math as the per-parameter loop, which
    torch picks there by default) and Adam/AdamW keep torch's default."""
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    return {"fused": True} if tensors and all(p.is_cuda for p in tensors) else {}


def has_momentum(cfg: OptimizerConfig) -> bool:
    """Whether the optimizer the user configured has a momentum term to cycle (Muon and
    Schedule-Free keep theirs)."""
    if cfg.name == "muon" or cfg.name in SCHEDULE_FREE:
        return False
    return cfg.name in ("adam", "adamw") or cfg.momentum > 0


def reference_config(cfg: OptimizerConfig) -> OptimizerConfig:
    """The plain torch optimizer a schedule's one-parameter reference is built as: ``cfg``
    itself, or for Schedule-Free and Muon the SGD (momentum) / AdamW (betas) of the same
    hyperparameters (no extra package, no 2-D parameter needed to trace a schedule)."""
    if cfg.name == "schedulefree_adamw":
        return OptimizerConfig(name="adamw", betas=cfg.betas, eps=cfg.eps)
    if cfg.name in SCHEDULE_FREE or cfg.name == "muon":
        return OptimizerConfig(name="sgd", momentum=cfg.momentum)
    return cfg


def current_momentum(optimizer: torch.optim.Optimizer) -> float | None:
    group = optimizer.param_groups[0]
    if "betas" in group:
        return float(group["betas"][0])
    return float(group["momentum"]) if "momentum" in group else None
