"""Models: a :class:`~clrctl.config.schema.ModelConfig` -> an ``nn.Module`` for a given input.

This module owns the built-in architectures and the two ways of bringing one's own:

- ``mlp``: Flatten -> [Linear -> ReLU] x len(hidden) -> Linear.
- ``lenet``: a LeNet-5 style CNN (LeCun et al. 1998) that adapts to any (C, H, W) >= 4x4.
- ``resnet20`` / ``resnet56``: the CIFAR ResNets of He et al. 2015 (arXiv 1512.03385, §4.2),
  6n+2 layers, used by the super-convergence paper (arXiv 1708.07120). Option-A
  (parameter-free, zero-padded identity) shortcuts as in that section, so the parameter
  counts match its table: 0.27M and 0.85M for 10 classes.
- ``torchvision:<name>``: ``torchvision.models.get_model`` with the first conv adapted to
  the input's channel count.
- ``<python.module>:<callable>``: a user factory, imported from the working directory.

Every failure is one :class:`ConfigError` line naming ``model.name`` (or ``model.args``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import os
import sys
import sysconfig
import traceback
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clrctl.config.schema import BUILTIN_MODELS, ModelConfig
from clrctl.compat import import_torchvision
from clrctl.errors import ConfigError


MAX_MLP_PARAMETERS = 2**30  # memory for the weights alone; more would fail later, allocating them


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The model ``cfg.name`` for samples of ``input_shape`` and ``num_classes`` outputs, with
    ``model.dropout`` before its classifier layer when set."""
    model = _build(cfg, tuple(int(d) for d in input_shape), num_classes)
    if cfg.dropout:
        if cfg.name not in BUILTIN_MODELS and not cfg.name.startswith("torchvision:"):
            raise ConfigError(f"model.dropout: applies to the built-in and torchvision: models; "
                              f"{cfg.name!r} is the user's own (add an nn.Dropout inside it)")
        add_head_dropout(model, cfg.dropout)
    return model


def _build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if cfg.name == "mlp":
        return mlp(input_shape, cfg.hidden, num_classes)
    if cfg.name == "lenet":
        return LeNet(_image_shape(cfg.name, input_shape), num_classes)
    if cfg.name in _RESNET_DEPTHS:
        channels = _image_shape(cfg.name, input_shape)[0]
        return CifarResNet(_RESNET_DEPTHS[cfg.name], channels, num_classes)
    prefix, _, name = cfg.name.partition(":")
    if prefix == "torchvision":
        return torchvision_model(name, input_shape, num_classes, cfg.args)
    return user_model(cfg.name, input_shape, num_classes, cfg.args)


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(
            f"model.name: {name!r} needs image input (C, H, W), but the data set gives {input_shape}; try mlp"
        )
    return input_shape  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------
# The head, and dropout before it (model.dropout; fastai's ps)


def head_module(model: nn.Module) -> str:
    """The name of the final classifier layer: the last ``nn.Linear`` in registration order
    (torchvision's ``fc``, ``classifier.6``, ``heads.head``, …), else the last module that holds
    parameters of its own ("" when the model is a single layer)."""
    holders = [name for name, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))]
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return (linears or holders or [""])[-1]


class HeadDropout(nn.Module):
    """Dropout (inverted, as ``nn.Dropout``) whose masks come from its own generator:
    :func:`seed_dropout` seeds it from the run's seed, and a checkpoint carries its state
    (:mod:`clrctl.track.dropout`), so a resumed run draws the masks the uninterrupted one does.
    Without a generator (a model built outside a run) it draws from torch's global one."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        self.generator: Optional[torch.Generator] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty_like(x).bernoulli_(keep, generator=self.generator)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _dropout_first(module: nn.Module, args: tuple) -> tuple:
    """A forward pre-hook: the classifier layer's input goes through its ``dropout`` child first."""
    return (module.dropout(args[0]), *args[1:])


def add_head_dropout(model: nn.Module, p: float) -> None:
    """Dropout of rate ``p`` on the input of the classifier layer (:func:`head_module`), as a
    child of that layer run by a forward pre-hook: the state_dict keeps its keys (pretrained
    weights load as before) and the head's parameters stay the head group's."""
    name = head_module(model)
    head = model.get_submodule(name)
    head.add_module("dropout", HeadDropout(p))
    head.register_forward_pre_hook(_dropout_first)


def dropouts(model: nn.Module) -> list[HeadDropout]:
    return [m for m in model.modules() if isinstance(m, HeadDropout)]


def seed_dropout(model: nn.Module, seed: int, device: torch.device, rank: int = 0) -> None:
    """Give each :class:`HeadDropout` of ``model`` a generator on ``device`` seeded from
    ``seed`` (a stream of its own: the batches' and the initialisation's are not touched; under
    DDP each ``rank`` its own, as each drops out of its own share of the batch)."""
    for index, module in enumerate(dropouts(model)):
        generator = torch.Generator(device=device)
        generator.manual_seed((seed * 1_000_003 + 7_777_777 + 1_009 * rank + index) % 2**63)
        module.generator = generator


# ---------------------------------------------------------------------------------------
# mlp, lenet


def mlp(input_shape: tuple[int, ...], hidden: list[int], num_classes: int) -> nn.Sequential:
    """Flatten -> [Linear -> ReLU] for each hidden size -> Linear(num_classes)."""
    widths = [math.prod(input_shape), *hidden, num_classes]
    parameters = sum((a + 1) * b for a, b in zip(widths, widths[1:]))
    if parameters > MAX_MLP_PARAMETERS:
        raise ConfigError(f"model.hidden: {hidden} makes an mlp of {parameters:,} parameters for input "
                          f"{input_shape}; at most {MAX_MLP_PARAMETERS:,} (4 GiB of float32)")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class LeNet(nn.Module):
    """LeNet-5 style: conv(6, 5x5) -> pool -> conv(16, 5x5) -> pool -> FC 120 -> 84 -> classes.

    Both convs pad by 2 ("same"), so 8x8 digits survive two 2x2 pools (-> 16 x 2 x 2) while
    28x28 MNIST gives 16 x 7 x 7; the flatten size comes from one dummy forward.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        if min(height, width) < 4:
            raise ConfigError(f"model.name: 'lenet' needs images of at least 4x4 (got {height}x{width})")
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *input_shape)).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# ---------------------------------------------------------------------------------------
# CIFAR ResNets (He et al. 2015, §4.2)

_RESNET_DEPTHS = {"resnet20": 20, "resnet56": 56}


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; option-A shortcut: subsample, then zero-pad the new channels."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.extra = stride, planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            half = self.extra // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra - half))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2): conv 16 -> 3 stages of n blocks (16, 32, 64 ch) -> global avg pool -> FC.

    Global average pooling (rather than a fixed 8x8 pool) lets 8x8 digits run through it.
    """

    def __init__(self, depth: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        assert (depth - 2) % 6 == 0, depth
        blocks = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        stages, planes = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks):
                stages.append(BasicBlock(planes, width, stride if i == 0 else 1))
                planes = width
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(64, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He et al. 2015 ("Delving deep", fan-in, ReLU gain) for convs and the classifier, as
        # the ResNet paper does; BatchNorm keeps torch's (1, 0).
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


# ---------------------------------------------------------------------------------------
# torchvision and user models


def torchvision_model(name: str, input_shape: tuple[int, ...], num_classes: int, args: dict) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=...)``, first conv adapted."""
    torchvision = import_torchvision()
    known = torchvision.models.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see torchvision.models.list_models())"
        raise ConfigError(f"model.name: unknown torchvision model {name!r}{hint}")
    # Named weights (args.weights) are loaded afterwards by clrctl.model.weights, shape by shape, so a
    # new head for num_classes and an adapted first conv work with pretrained weights.
    kwargs = {"num_classes": num_classes, **{k: v for k, v in args.items() if k != "weights"}, "weights": None}
    try:
        model = torchvision.models.get_model(name, **kwargs)
    except Exception as err:  # noqa: BLE001 - any constructor failure is a config problem
        raise ConfigError(f"model.args: torchvision model {name!r} refused {args}: {_one_line(err)}") from None
    if len(input_shape) == 3:
        adapt_first_conv(model, input_shape[0])
    return model


def adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first ``nn.Conv2d`` by one with the same settings but ``in_channels``.

    "First" in registration order, which is the forward order in torchvision's models.
    """
    name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None or conv.in_channels == in_channels:
        return
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, _conv_like(conv, in_channels))


def _conv_like(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    groups = conv.groups if in_channels % conv.groups == 0 else 1
    return nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
    )  # fmt: skip


def user_model(spec: str, input_shape: tuple[int, ...], num_classes: int, args: dict) -> nn.Module:
    """``module:callable``: import from the working directory, call, and check the result."""
    factory = _resolve_callable(spec)
    kwargs = {}
    wanted = {"num_classes": num_classes, "input_shape": input_shape}
    for key, value in wanted.items():
        if _accepts(factory, key):
            kwargs[key] = value
    kwargs.update(args)
    try:
        model = factory(**kwargs)
    except USER_ERRORS as err:  # noqa: BLE001 - user code: report, do not crash
        # Chained (not `from None`): --debug then shows the user's own traceback.
        raise ConfigError(f"model.name: {spec!r} raised {_describe(err)}") from err
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {spec!r} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def _resolve_callable(spec: str, key: str = "model.name"):
    """The callable ``module:attr.path`` names; errors name the config ``key``."""
    module_name, _, attr_path = spec.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        # `clrctl train` run from a project directory should find that project's modules.
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except USER_ERRORS as err:  # noqa: BLE001 - ImportError, SyntaxError, or the module's own failure
        raise ConfigError(f"{key}: cannot import module {module_name!r}: {_describe(err)}{_looked_in(err)}") from err
    target = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{key}: module {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{key}: {spec!r} is a {type(target).__name__}, not a callable")
    return target


def _looked_in(err: BaseException) -> str:
    """Where a module that is not found was looked for (beyond installed packages)."""
    if not isinstance(err, ModuleNotFoundError):
        return ""
    from clrctl.config.schema import looked_in

    return looked_in()


def _accepts(factory, name: str) -> bool:
    """Whether ``factory`` takes keyword ``name`` (explicitly or through ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    return any(
        p.kind is p.VAR_KEYWORD or (p.name == name and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in params
    )


# What user code may raise that clrctl reports as a config error naming the callable: an
# exit() there (SystemExit) must not end clrctl quietly with the user code's exit status.
USER_ERRORS = (Exception, SystemExit)


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _describe(err: BaseException) -> str:
    """``Type: first line (at FILE:LINE)`` of an exception raised by the user's code."""
    if isinstance(err, SystemExit):
        return f"SystemExit (it called exit({'' if err.code is None else repr(err.code)})){_where(err)}"
    text = err.msg if isinstance(err, SyntaxError) else _one_line(err)  # msg: without "(file, line)"
    kind = "" if isinstance(err, ImportError) else f"{type(err).__name__}: "  # "No module named …" says it
    return f"{kind}{text}{_where(err)}"


def _where(err: BaseException) -> str:
    """`` (at FILE:LINE)``: where the user's code failed — the innermost frame outside clrctl,
    the standard library and installed packages (a SyntaxError: its own file and line)."""
    if isinstance(err, SyntaxError) and err.filename:
        return f" (at {err.filename}:{err.lineno})"
    frames = traceback.extract_tb(err.__traceback__)
    library = tuple(os.path.realpath(p) + os.sep for p in {*_LIBRARY_DIRS, os.path.dirname(__file__)})
    user = [f for f in frames if not f.filename.startswith("<")
            and not os.path.realpath(f.filename).startswith(library)]
    frame = user[-1] if user else None
    return f" (at {frame.filename}:{frame.lineno})" if frame else ""


# The standard library and installed packages: not the user's code.
_LIBRARY_DIRS = {path for key in ("stdlib", "platstdlib", "purelib", "platlib")
                 if (path := sysconfig.get_paths().get(key))}
