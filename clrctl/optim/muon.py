"""``optimizer.name: muon``: torch.optim.Muon for the hidden 2-D weight matrices, AdamW for
every other parameter, stepped as one optimizer (Jordan et al. 2024, "Muon: an optimizer for
hidden layers"; ``torch.optim.Muon``).

Which parameters are Muon's: :func:`clrctl.optim.groups.muon_param_names` (the weights of the
hidden ``nn.Linear`` layers); :func:`~clrctl.optim.groups.torch_param_groups` marks each
torch group ``muon: True/False``. Muon runs with ``adjust_lr_fn="match_rms_adamw"`` (Liu et al.
2025, "Muon is scalable for LLM training"): its orthogonalised update is scaled to AdamW's
update RMS (0.2 sqrt(max(rows, cols))), so **one LR serves both halves** — the policy's LR
x the group's ``lr_mult``, written into every torch group as for any optimizer. Muon's momentum
(``optimizer.momentum``, default 0.95, Nesterov) and AdamW's ``betas`` are not cycled.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch


class MuonAdamW(torch.optim.Optimizer):
    """A ``torch.optim.Muon`` and a ``torch.optim.AdamW`` behind one optimizer object: the loop,
    the schedule (``param_groups``: Muon's groups first, then AdamW's, the same dicts), the
    gradient scaler and checkpoints (``state_dict``: both, by name) see one optimizer."""

    def __init__(self, groups: list[dict[str, Any]], lr: float, momentum: float, betas, eps: float,
                 weight_decay: float, fast: Optional[dict[str, bool]] = None):
        muon = [g for g in groups if g.get("muon")]
        adamw = [g for g in groups if not g.get("muon")]
        self.muon = torch.optim.Muon(muon, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True,
                                     adjust_lr_fn="match_rms_adamw") if muon else None
        self.adamw = torch.optim.AdamW(adamw, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                       **(fast or {})) if adamw else None
        self.parts = {name: opt for name, opt in (("muon", self.muon), ("adamw", self.adamw)) if opt is not None}
        # (not Optimizer.__init__: each part keeps its own state; the hooks torch's base class
        # would call are the parts')
        self.defaults = {"lr": lr}
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.parts.values() for g in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for opt in self.parts.values() for p, s in opt.state.items()}

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.parts.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Both parts' state dicts by name, and every group's settings (``param_groups``: what a
        checkpoint's layout check counts)."""
        parts = {name: opt.state_dict() for name, opt in self.parts.items()}
        groups = [g for part in parts.values() for g in part["param_groups"]]
        return {"parts": parts, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        parts = state_dict.get("parts", {})
        if set(parts) != set(self.parts):
            raise ValueError(f"a muon checkpoint of parts {sorted(parts)}, not {sorted(self.parts)}")
        for name, opt in self.parts.items():
            opt.load_state_dict(parts[name])

    def __repr__(self) -> str:
        return f"MuonAdamW({', '.join(f'{k}: {len(o.param_groups)} groups' for k, o in self.parts.items())})"
