"""Several seeds' models as one stacked model (``torch.func``): what ``--vectorize`` trains.

:class:`ModelStack` holds the K models' parameters stacked along a new first axis (PyTorch's
"model ensembling" recipe: ``stack_module_state``, ``functional_call``, ``vmap``). The stacked
tensors are the parameters of ``holder``, a copy of the first model whose every parameter has
the extra axis: its parameter names and module types are the model's, so the parameter groups,
``no_decay`` and the stages' freezing are built from it exactly as for one model, and torch's
own SGD/Adam/AdamW step all K models at once (their updates are elementwise, so each slice is
the update that model would get alone; weight decay is elementwise too). Gradient clipping is
per model: each model's own norm over its own slices.

The K models themselves keep their own storage: :meth:`ModelStack.copy_out` writes the stack
into them (before an evaluation or a checkpoint), so evaluations, ``best.pt`` and ``last.pt``
see an ordinary, unstacked model. :meth:`optimizer_state_of` and :meth:`load_optimizer_states`
translate the optimizer's state between the stacked optimizer and the K models' own.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import nn

from clrctl.config.schema import Config
from clrctl.errors import ConfigError

# The optimizers whose step is elementwise: torch's own, on the stacked parameters, is exact.
VECTORIZED_OPTIMIZERS = ("sgd", "adam", "adamw")


def refusal(config: Config) -> Optional[str]:
    """Why ``config`` cannot train vectorised (one line), or None. Checked before anything is built."""
    train = config.train
    for stage in config.plan():
        name = stage.optimizer.name
        if name not in VECTORIZED_OPTIMIZERS:
            key = f"stages.{stage.name}.optimizer.name" if config.has_stages else "optimizer.name"
            return f"{key}: {name} cannot be vectorised (--vectorize steps {', '.join(VECTORIZED_OPTIMIZERS)})"
    options = [("train.accumulate", train.accumulate > 1), ("train.ema", train.ema is not None),
               ("train.swa", train.swa is not None), ("train.snapshots", bool(train.snapshots)),
               ("train.skip_nonfinite", train.skip_nonfinite), ("train.compile", train.compile),
               ("train.channels_last", train.channels_last), ("train.amp", train.amp),
               ("train.precision", train.precision not in (None, "fp32"))]
    for key, on in options:
        if on:
            return f"{key}: not available with --vectorize (train without it, or without --vectorize)"
    return None


def model_refusal(model: nn.Module, model_name: str) -> Optional[str]:
    """Why ``model`` cannot be stacked (BatchNorm's running statistics are not), or None."""
    norms = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        return (f"model.name: {model_name} has BatchNorm layers ({', '.join(norms[:3])}{', …' if len(norms) > 3 else ''}); "
                "--vectorize does not stack running statistics: train the seeds without --vectorize")
    return None


class ModelStack:
    """The parameters of ``models`` (same architecture, on one device) stacked: ``holder``'s."""

    def __init__(self, models: list[nn.Module]):
        self.models = list(models)
        first = models[0]
        self.holder = copy.deepcopy(first)
        with torch.no_grad():
            for name, param in first.named_parameters():
                stacked = torch.stack([m.get_parameter(name).detach() for m in models])
                _set(self.holder, name, nn.Parameter(stacked, requires_grad=param.requires_grad))
        self.names = [name for name, _ in self.holder.named_parameters()]
        # buffers (no running statistics: refused) go to every model alike, stacked too
        self.buffers = {name: torch.stack([m.get_buffer(name) for m in models]) for name, _ in first.named_buffers()}
        self.base = copy.deepcopy(first).to("meta")  # the structure that functional_call runs

    @property
    def size(self) -> int:
        return len(self.models)

    def params(self) -> dict[str, torch.Tensor]:
        return dict(self.holder.named_parameters())

    def forward_fn(self, loss_fn: nn.Module):
        """``(params, buffers, x, y) -> (losses (K,), logits (K, B, C))`` over the stack."""
        from torch.func import functional_call, vmap

        base = self.base

        def one(params, buffers, x, y):
            logits = functional_call(base, (params, buffers), (x,))
            return loss_fn(logits, y), logits

        return vmap(one, in_dims=(0, 0, 0, 0), randomness="different")

    @torch.no_grad()
    def copy_out(self) -> None:
        """The stack's values into each model's own parameters (evaluations, checkpoints)."""
        params = self.params()
        for k, model in enumerate(self.models):
            own = [model.get_parameter(n) for n in self.names]
            torch._foreach_copy_(own, [params[n][k] for n in self.names])

    @torch.no_grad()
    def copy_in(self) -> None:
        """Each model's own parameters into the stack (after a checkpoint was loaded into them)."""
        params = self.params()
        for name in self.names:
            params[name].copy_(torch.stack([m.get_parameter(name) for m in self.models]))

    def remove(self, index: int, optimizer: Optional[torch.optim.Optimizer]) -> None:
        """Take model ``index`` out of the stack (it diverged or finished): its slice of every
        parameter and optimizer state goes, so nothing of it reaches the others' steps."""
        keep = [k for k in range(self.size) if k != index]
        del self.models[index]
        if not keep:
            return
        rows = torch.tensor(keep, device=next(iter(self.params().values())).device)
        with torch.no_grad():
            for param in self.holder.parameters():
                size = param.shape[0]
                param.grad = None
                if optimizer is not None and param in optimizer.state:
                    state = optimizer.state[param]
                    for key, value in list(state.items()):
                        if torch.is_tensor(value) and value.dim() and value.shape[0] == size:
                            state[key] = value.index_select(0, rows).clone()
                param.data = param.data.index_select(0, rows).clone()
            self.buffers = {n: b.index_select(0, rows).clone() for n, b in self.buffers.items()}

    # -- optimizer state between the stacked optimizer and each model's own ----------
    @staticmethod
    def optimizer_state_of(stacked: torch.optim.Optimizer, own: torch.optim.Optimizer, index: int) -> None:
        """Model ``index``'s slice of ``stacked``'s state (and its hyperparameters) into ``own``,
        an optimizer over that model's parameters built alike (its checkpoint's ``optimizer``)."""
        own.state.clear()
        for big_group, small_group in zip(stacked.param_groups, own.param_groups):
            small_group.update({k: v for k, v in big_group.items() if k != "params"})
            for big, small in zip(big_group["params"], small_group["params"]):
                if big not in stacked.state:
                    continue
                own.state[small] = {key: (value[index].clone() if _stacked(value, big) else _copy(value))
                                    for key, value in stacked.state[big].items()}

    @staticmethod
    def load_optimizer_states(stacked: torch.optim.Optimizer, owns: list[torch.optim.Optimizer]) -> None:
        """The K models' own optimizer states (restored from their checkpoints) stacked into ``stacked``."""
        first = owns[0]
        for g, big_group in enumerate(stacked.param_groups):
            big_group.update({k: v for k, v in first.param_groups[g].items() if k != "params"})
            for i, big in enumerate(big_group["params"]):
                smalls = [own.param_groups[g]["params"][i] for own in owns]
                states = [own.state.get(p) for own, p in zip(owns, smalls)]
                if any(not s for s in states):
                    stacked.state.pop(big, None)
                    continue
                stacked.state[big] = {key: (torch.stack([s[key] for s in states]).to(big.dtype)
                                            if torch.is_tensor(value) and value.shape == smalls[0].shape
                                            and value.dim() else _copy(value))
                                      for key, value in states[0].items()}


def clip_per_model(params: list[torch.Tensor], clip: float) -> torch.Tensor:
    """Each model's gradients clipped to norm ``clip`` as ``clip_grad_norm_`` clips one model's
    (its own total norm over all its parameters); returns the K pre-clip norms."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    squares = torch.stack([g.flatten(1).float().pow(2).sum(1) for g in grads]).sum(0)
    norms = squares.sqrt()
    coef = (clip / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
    return norms


def _stacked(value: Any, param: torch.Tensor) -> bool:
    return torch.is_tensor(value) and value.dim() > 0 and value.shape == param.shape


def _copy(value: Any) -> Any:
    return value.clone() if torch.is_tensor(value) else copy.deepcopy(value)


def _set(module: nn.Module, name: str, param: nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(owner) if owner else module, leaf, param)


def probe(stack: ModelStack, loss_fn: nn.Module, xs: torch.Tensor, ys: torch.Tensor, model_name: str) -> None:
    """A forward and backward of the stacked model on ``xs, ys`` (K small batches), gradients
    dropped: a model ``torch.func`` cannot run fails here, as one line, before any directory."""
    try:
        losses, _ = stack.forward_fn(loss_fn)(stack.params(), stack.buffers, xs, ys)
        losses.sum().backward()
    except Exception as err:  # noqa: BLE001 - any failure here: the model cannot be vectorised
        lines = str(err).strip().splitlines()
        raise ConfigError(f"model.name: {model_name} cannot be vectorised (torch.func fails with "
                          f"{type(err).__name__}: {lines[0] if lines else ''}); train the seeds without --vectorize"
                          ) from err
    finally:
        for param in stack.holder.parameters():
            param.grad = None
