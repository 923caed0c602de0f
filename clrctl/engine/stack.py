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
    options.append(("model.dropout", bool(getattr(config.model, "dropout", None))))
    for key, on in options:
        if on:
            return f"{key}: not available with --vectorize (train without it, or without --vectorize)"
    for stage in config.plan():
        if getattr(stage, "image_size", None) is not None:
            return (f"stages.{stage.name}.dataset.image_size: a stage's own image size is not available with "
                    "--vectorize (train without it, or without --vectorize)")
    return None


def setup_refusal(setup) -> Optional[str]:
    """What only the built setup tells (a stage whose head trains on precomputed features), or None."""
    used = [p.get("stage") for p in getattr(setup, "precompute", []) or [] if p.get("used")]
    if used:
        return (f"train.precompute: stage {used[0]} would train its head on precomputed features, which "
                "--vectorize does not stack; set train.precompute: off (or train without --vectorize)")
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
        # (the same objects for the stack's life: a model leaving replaces their .data only)
        self._params = dict(self.holder.named_parameters())
        self._own = [[m.get_parameter(n) for n in self.names] for m in models]
        # buffers (no running statistics: refused) go to every model alike, stacked too
        self.buffers = {name: torch.stack([m.get_buffer(name) for m in models]) for name, _ in first.named_buffers()}
        self.base = copy.deepcopy(first).to("meta")  # the structure that functional_call runs
        self.folded: Optional[nn.Module] = None  # (forward_fn: the folded model, where there is one)

    @property
    def size(self) -> int:
        return len(self.models)

    def params(self) -> dict[str, torch.Tensor]:
        return self._params

    def forward_fn(self, loss_fn: nn.Module):
        """``(params, buffers, x, y) -> (losses (K,), logits (K, B, C))`` over the stack.

        Models made of per-sample layers whose only parameters are in ``nn.Linear`` and
        ``nn.Conv2d`` (the built-in MLP and LeNet, any ``nn.Sequential`` of such layers) run
        as one model on the K batches folded into one (K·B, …): each Linear a batched matmul
        (``baddbmm``), each Conv2d one grouped convolution (K groups; on the CPU K plain ones):
        what ``vmap`` turns them into, without its per-call cost. Any other
        model goes through ``vmap`` of ``functional_call`` (dropout: ``randomness="different"``)."""
        from torch.func import functional_call, vmap

        base = self.base
        folded = _folded_model(base, self.holder) if not self.buffers else None
        per_model_loss = _per_model_loss(loss_fn)
        self.per_model_loss = per_model_loss
        if folded is not None:
            folded.train(base.training)
            self.folded = folded

            def fast(params, buffers, x, y):
                k, b = x.shape[0], x.shape[1]
                logits = folded(x.reshape(k * b, *x.shape[2:]))
                logits = logits.reshape(k, b, *logits.shape[1:])
                return per_model_loss(logits, y), logits

            return fast

        def one(params, buffers, x, y):
            logits = functional_call(base, (params, buffers), (x,))
            return loss_fn(logits, y), logits

        return vmap(one, in_dims=(0, 0, 0, 0), randomness="different")

    @torch.no_grad()
    def copy_out(self) -> None:
        """The stack's values into each model's own parameters (evaluations, checkpoints)."""
        stacked = [self._params[n] for n in self.names]
        for k, own in enumerate(self._own):
            torch._foreach_copy_(own, [p[k] for p in stacked])

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
        del self._own[index]
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


class _StackedLinear(nn.Module):
    """K ``nn.Linear`` layers (the stacked weight (K, out, in), bias (K, out)) on folded input."""

    def __init__(self, weight: nn.Parameter, bias: Optional[nn.Parameter]):
        super().__init__()
        object.__setattr__(self, "w", weight)  # (not registered: the holder owns them)
        object.__setattr__(self, "b", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.w, self.b
        k = w.shape[0]
        if k == 1:  # (one model left: torch's own linear, whose backward is cheaper than bmm's)
            return torch.nn.functional.linear(x, w[0], None if b is None else b[0])
        lead = x.shape[:-1]
        xs = x.reshape(k, -1, x.shape[-1])
        out = torch.bmm(xs, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), xs, w.transpose(1, 2))
        return out.reshape(*lead, w.shape[1])


class _StackedConv2d(nn.Module):
    """K ``nn.Conv2d`` layers: on a GPU one grouped convolution over the K models' channels,
    on the CPU one convolution per model on its slice of the folded batch."""

    def __init__(self, conv: nn.Conv2d, weight: nn.Parameter, bias: Optional[nn.Parameter]):
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        object.__setattr__(self, "w", weight)
        object.__setattr__(self, "b", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.w, self.b
        k = w.shape[0]
        n, c, h, width = x.shape
        if not x.is_cuda:  # (the CPU's grouped convolutions are many times slower than K plain ones)
            conv = torch.nn.functional.conv2d
            return torch.cat([conv(part, w[i], None if b is None else b[i], self.stride, self.padding, self.dilation,
                                   self.groups) for i, part in enumerate(x.chunk(k))])
        xs = x.reshape(k, n // k, c, h, width).transpose(0, 1).reshape(n // k, k * c, h, width)
        out = torch.nn.functional.conv2d(xs, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1),
                                         self.stride, self.padding, self.dilation, self.groups * k)
        o = w.shape[1]
        return out.reshape(n // k, k, o, *out.shape[2:]).transpose(0, 1).reshape(n, o, *out.shape[2:])


# Layers without parameters that treat each sample on its own (what folding needs).
_PER_SAMPLE = (nn.Sequential, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Flatten,
               nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity)


def _folded_model(base: nn.Module, holder: nn.Module) -> Optional[nn.Module]:
    """A copy of ``base`` whose Linear/Conv2d layers are stacked ones reading ``holder``'s
    parameters, when every other module is a known per-sample layer and the model's own
    forward is one known to treat samples alone (``nn.Sequential``, clrctl's built-in models)."""
    if not (type(base) is nn.Sequential or type(base).__module__ == "clrctl.model.build"):
        return None
    if any(True for _ in base.buffers()):
        return None
    for name, module in base.named_modules():
        if module is base and type(base) is not nn.Sequential:
            continue
        if type(module) is nn.Linear or (type(module) is nn.Conv2d and module.padding_mode == "zeros"
                                         and not isinstance(module.padding, str)):
            continue
        if type(module) not in _PER_SAMPLE and not (type(module).__module__ == "clrctl.model.build"
                                                    and not any(True for _ in module.parameters(recurse=False))):
            return None
    folded = copy.deepcopy(base)
    for name, module in list(folded.named_modules()):
        if type(module) in (nn.Linear, nn.Conv2d):
            weight = holder.get_parameter(f"{name}.weight" if name else "weight")
            bias = holder.get_parameter(f"{name}.bias" if name else "bias") if module.bias is not None else None
            stacked = _StackedLinear(weight, bias) if type(module) is nn.Linear else _StackedConv2d(module, weight, bias)
            owner, _, leaf = name.rpartition(".")
            if not name:
                return None  # (a bare layer as the whole model: vmap)
            setattr(folded.get_submodule(owner) if owner else folded, leaf, stacked)
    return folded


def _per_model_loss(loss_fn: nn.Module):
    """``(logits (K, B, …), y (K, B, …)) -> (K,)``: each model's own mean loss."""
    if type(loss_fn) is nn.CrossEntropyLoss and loss_fn.weight is None and loss_fn.reduction == "mean":
        smoothing, ignore = loss_fn.label_smoothing, loss_fn.ignore_index

        def cross_entropy(logits, y):
            k, b = y.shape[0], y.shape[1]  # (class labels: never ignore_index)
            per_sample = torch.nn.functional.cross_entropy(logits.reshape(k * b, -1), y.reshape(-1),
                                                           ignore_index=ignore, reduction="none",
                                                           label_smoothing=smoothing)
            return per_sample.reshape(k, b).mean(1)

        return cross_entropy
    from torch.func import vmap

    return vmap(loss_fn)


@torch.no_grad()
def evaluate_stack(stack: ModelStack, sources: list) -> Optional[list[tuple[float, Optional[float]]]]:
    """Each model's (mean loss, accuracy) over its own validation source, all K in one forward
    of the folded model a batch and one host transfer: what :func:`clrctl.engine.step.evaluate`
    gives each alone (float rounding aside). None where the stack has no folded model or the
    sources differ in size (each model is then evaluated alone)."""
    folded = stack.folded
    first = sources[0]
    if folded is None or any(s.num_samples != first.num_samples or len(s) != len(first) for s in sources):
        return None
    k = len(sources)
    was_training = folded.training
    folded.eval()
    loss_sum, correct, seen = None, None, 0
    classify = True
    for batches in zip(*(s.batches(0) for s in sources)):
        xs, ys = torch.stack([x for x, _ in batches]), torch.stack([y for _, y in batches])
        b = ys.shape[1]
        logits = folded(xs.reshape(k * b, *xs.shape[2:]))
        logits = logits.reshape(k, b, *logits.shape[1:])
        batch_loss = stack.per_model_loss(logits, ys).float() * b
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        classify = classify and not ys.is_floating_point()
        if classify:
            hits = torch.eq(logits.argmax(-1), ys).sum(1)
            correct = hits if correct is None else correct + hits
        seen += b
    folded.train(was_training)
    values = torch.cat([loss_sum, correct.float()] if classify else [loss_sum]).tolist()
    return [(values[i] / seen, values[k + i] / seen if classify else None) for i in range(k)]


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
