"""Named parameter groups: the one seam that splits a model's parameters for the optimizer.

Each group has a name, an LR multiplier and optionally its own weight decay (timm's
``lr_scale`` per group, ``timm/optim/_param_groups.py``). Without ``optimizer.groups`` every
model has ``body`` and ``head`` (head = the final classifier layer); with it, fnmatch patterns
on ``model.named_parameters()`` pick the parameters, the first matching group wins, and the
unmatched rest forms ``rest``. The trainer, the range test and ``preview`` all take their
groups from here, and stages freeze groups by name.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Optional

from torch import nn

from clrctl.config.schema import DEFAULT_GROUPS, REST_GROUP, OptimizerConfig
from clrctl.errors import ConfigError
from clrctl.model.build import head_module  # (the final classifier layer: the model's own knowledge)

# Modules whose weights count as "norm" for optimizer.no_decay (their biases are "bias" too).
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES += (nn.RMSNorm,)


@dataclass
class ParamGroup:
    name: str
    lr_mult: float = 1.0
    weight_decay: Optional[float] = None  # None: optimizer.weight_decay
    params: list[tuple[str, nn.Parameter]] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(p.numel() for _, p in self.params)

    def describe(self) -> dict[str, Any]:
        """What run.json records of a group."""
        return {"name": self.name, "lr_mult": self.lr_mult, "weight_decay": self.weight_decay,
                "tensors": len(self.params), "parameters": self.numel}


def build_groups(model: nn.Module, cfg: OptimizerConfig) -> list[ParamGroup]:
    """The named groups of ``model`` for ``cfg``; empty groups are kept only for body/head."""
    named = [(n, p) for n, p in model.named_parameters()]
    if not cfg.groups:
        head = head_module(model)
        in_head = (lambda n: n.startswith(head + ".")) if head else (lambda n: True)
        body, top = ParamGroup(DEFAULT_GROUPS[0]), ParamGroup(DEFAULT_GROUPS[1])
        for name, param in named:
            (top if in_head(name) else body).params.append((name, param))
        return [body, top]
    groups = [ParamGroup(g.name, g.lr_mult, g.weight_decay) for g in cfg.groups]
    rest = ParamGroup(REST_GROUP)
    claimed_by: dict[str, str] = {}
    patterns = [g.params if g.params is not None else _builtin_patterns(model, g.name) for g in cfg.groups]
    for name, param in named:
        owner = next((i for i, p in enumerate(patterns) if _matches(name, p)), None)
        (rest if owner is None else groups[owner]).params.append((name, param))
        if owner is not None:
            claimed_by[name] = cfg.groups[owner].name
    for index, (spec, group) in enumerate(zip(cfg.groups, groups)):
        if not group.params:
            _refuse_empty(index, spec, patterns[index], named, claimed_by)
    return groups + ([rest] if rest.params else [])


def _builtin_patterns(model: nn.Module, name: str) -> list[str]:
    """``body`` / ``head`` without params: the split of :func:`head_module`, as patterns."""
    head = head_module(model)
    in_head = [n for n, _ in model.named_parameters() if not head or n.startswith(head + ".")]
    if name == DEFAULT_GROUPS[1]:
        return in_head
    return [n for n, _ in model.named_parameters() if n not in in_head]  # parameter names match themselves


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _refuse_empty(index: int, spec, patterns: list[str], named, claimed_by) -> None:
    hits = [n for n, _ in named if _matches(n, patterns)]
    key = f"optimizer.groups.{index}.params"
    if not hits:
        sample = ", ".join(n for n, _ in named[:6]) + (", …" if len(named) > 6 else "")
        raise ConfigError(f"{key}: {patterns} match no parameter of the model (its parameters: {sample})")
    owners = sorted({claimed_by[n] for n in hits})
    raise ConfigError(f"{key}: group {spec.name!r} is dead: every parameter it matches is taken by an earlier "
                      f"group ({', '.join(owners)}); put it before them or narrow their patterns")


def check_trainable(groups: list[ParamGroup], frozen: tuple[str, ...], where: str) -> None:
    """A stage must leave at least one parameter to train."""
    if not any(g.params for g in groups if g.name not in frozen):
        raise ConfigError(f"{where}.freeze: freezes every group that has parameters; nothing would train")


def torch_param_groups(groups: list[ParamGroup], model: nn.Module, cfg: OptimizerConfig,
                       frozen: tuple[str, ...] = (), merge: bool = True) -> list[dict[str, Any]]:
    """torch optimizer ``param_groups`` for the groups that train: each carries its ``name`` and
    ``lr_mult``; with ``no_decay`` a group is split into a decaying and a non-decaying part.

    ``merge``: parts that train alike (same ``lr_mult`` and weight decay) share one torch group,
    named ``body+head``. Every torch group costs the optimizer a Python loop and its own
    kernels per step (5% of a small MLP's step on CPU); the math per parameter is the same.
    """
    exempt = _no_decay_names(model, cfg.no_decay)
    out = []
    for group in groups:
        if group.name in frozen or not group.params:
            continue
        decay = cfg.weight_decay if group.weight_decay is None else group.weight_decay
        parts = [(decay, [p for n, p in group.params if n not in exempt]),
                 (0.0, [p for n, p in group.params if n in exempt])]
        for weight_decay, params in parts:
            if params:
                out.append({"params": params, "name": group.name, "lr_mult": group.lr_mult,
                            "weight_decay": weight_decay})
    if cfg.name == "muon":
        out = split_muon(out, model)
    return _merge_alike(out) if merge else out


def muon_param_names(model: nn.Module) -> set[str]:
    """The parameters Muon updates (Jordan et al. 2024; torch.optim.Muon): the 2-D weight
    matrices of the hidden ``nn.Linear`` layers. The classifier head (:func:`head_module`),
    embeddings, biases, norms and convolution filters (4-D: torch's Muon takes 2-D only) go
    to AdamW."""
    head = head_module(model)
    return {f"{name}.weight" if name else "weight" for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name != head and module.weight.ndim == 2}


def split_muon(parts: list[dict[str, Any]], model: nn.Module) -> list[dict[str, Any]]:
    """Each torch group of ``model``'s parameters split into its Muon parameters (``"muon":
    True``) and the rest (AdamW), the Muon parts first; a group's ``lr_mult`` and weight decay
    apply to both halves."""
    named = dict(model.named_parameters())
    ids = {id(named[n]) for n in muon_param_names(model)}
    first, rest = [], []
    for part in parts:
        for flag, into in ((True, first), (False, rest)):
            params = [p for p in part["params"] if (id(p) in ids) == flag]
            if params:
                into.append(dict(part, params=params, muon=flag))
    return first + rest


def _merge_alike(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: dict[tuple[float, float], dict[str, Any]] = {}
    for part in parts:
        key = (part["lr_mult"], part["weight_decay"], part.get("muon"))
        if key not in merged:
            merged[key] = dict(part, params=list(part["params"]))
            continue
        into = merged[key]
        into["params"] += part["params"]
        if part["name"] not in into["name"].split("+"):
            into["name"] += "+" + part["name"]
    return list(merged.values())


def load_optimizer_state(optimizer, state: dict[str, Any], unmerged: list[dict[str, Any]]) -> None:
    """``optimizer.load_state_dict(state)``, also for a ``state`` saved before alike groups were
    merged (one torch group per part, laid out as ``unmerged``): its per-parameter state is
    mapped onto the merged groups by parameter, so such a run still resumes exactly."""
    if len(state["param_groups"]) == len(optimizer.param_groups):
        optimizer.load_state_dict(state)
        return
    saved_ids = [i for group in state["param_groups"] for i in group["params"]]
    old_order = [p for group in unmerged for p in group["params"]]
    if len(saved_ids) != len(old_order) or len(state["param_groups"]) != len(unmerged):
        optimizer.load_state_dict(state)  # not that layout either: torch's own error
        return
    saved_id = {id(p): i for p, i in zip(old_order, saved_ids)}
    groups = [dict(hyper, params=[saved_id[id(p)] for p in live["params"]])
              for hyper, live in zip(optimizer.state_dict()["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({"state": state["state"], "param_groups": groups})


def _no_decay_names(model: nn.Module, kinds: list[str]) -> set[str]:
    names: set[str] = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if ("bias" in kinds and param_name == "bias") or ("norm" in kinds and isinstance(module, _NORM_TYPES)):
                names.add(full)
    return names


def set_frozen(groups: list[ParamGroup], frozen: tuple[str, ...]) -> None:
    """Freezing as data (airbench): requires_grad follows the stage's ``freeze`` list."""
    for group in groups:
        for _, param in group.params:
            param.requires_grad_(group.name not in frozen)


def frozen_batchnorms(model: nn.Module, frozen: tuple[str, ...]) -> list[nn.Module]:
    """The BatchNorm layers none of whose parameters train (after :func:`set_frozen`); none
    when the stage freezes nothing."""
    if not frozen:
        return []
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not any(p.requires_grad for p in m.parameters(recurse=False))]


def _stay_in_eval(module: nn.Module, args: tuple) -> None:
    module.training = False  # (model.train() sets it again; each forward of the stage undoes that)


def set_bn_frozen(model: nn.Module, frozen: tuple[str, ...], on: bool) -> None:
    """``train.bn_freeze``: the frozen BatchNorm layers of this stage run in eval mode (their
    running statistics fixed, as fastai's BnFreeze); the previous stage's are released."""
    for module in model.modules():
        handle = getattr(module, "_clrctl_bn_freeze", None)
        if handle is not None:
            handle.remove()
            del module._clrctl_bn_freeze
            module.training = model.training
    if on:
        for module in frozen_batchnorms(model, frozen):
            module._clrctl_bn_freeze = module.register_forward_pre_hook(_stay_in_eval)
