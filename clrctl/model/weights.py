"""Starting weights (``model.weights``, and torchvision's named ``model.args.weights``).

A state_dict is loaded key by key: keys whose shapes do not fit the model (a new head for
another number of classes, a first conv adapted to other input channels) keep their fresh
initialisation and are reported; any other missing or unexpected key is one ConfigError line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from clrctl.files import checkpoint
from clrctl.config.schema import ModelConfig, looked_in
from clrctl.errors import ConfigError, InputError

# Prefixes that wrappers add to every key: DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def load_weights(model: nn.Module, cfg: ModelConfig) -> Optional[dict[str, Any]]:
    """Load the configured starting weights into ``model``; returns what run.json records
    (source and the re-initialised keys), or None when the model starts from scratch."""
    if cfg.weights is not None:
        path = weights_file(cfg.weights)
        source, state = str(path), read_state_dict(path, "model.weights")
    elif cfg.name.startswith("torchvision:") and cfg.args.get("weights") not in (None, "None"):
        source, state = torchvision_state_dict(cfg.name.partition(":")[2], str(cfg.args["weights"]))
    else:
        return None
    reinitialised = load_fitting(model, state, source)
    return {"source": source, "reinitialised": reinitialised}


def weights_file(spec: str) -> Path:
    """A state_dict file, or a clrctl run directory: its checkpoints/best.pt, else last.pt."""
    path = Path(spec)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise ConfigError(f"model.weights: {spec} has no checkpoints/best.pt or last.pt (not a clrctl run?)")
    if not path.is_file():
        raise ConfigError(f"model.weights: no such file or run directory: {spec}{looked_in(spec)}")
    return path


def read_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    try:
        obj = checkpoint.load(path, "cpu")  # as data only: a shared file runs no code
    except InputError as err:
        raise ConfigError(f"{key}: {err}") from None
    if isinstance(obj, dict):
        for wrapper in ("model", "state_dict"):  # clrctl checkpoints; Lightning checkpoints
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{key}: {path} holds no state_dict (a mapping of parameter names to tensors)")
    return _strip_wrappers(obj)


def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_fitting(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load every key whose shape fits; returns the keys left freshly initialised."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = [f"missing {few_keys(missing)}" if missing else "",
                 f"unexpected {few_keys(unexpected)}" if unexpected else ""]
        raise ConfigError(f"model.weights: {source} does not fit this model "
                          f"({'; '.join(p for p in parts if p)}) — weights of another architecture?")
    mismatched = [k for k in own if own[k].shape != state[k].shape]
    model.load_state_dict({k: v for k, v in state.items() if k not in mismatched}, strict=False)
    return mismatched


def torchvision_state_dict(name: str, weights: str) -> tuple[str, dict[str, torch.Tensor]]:
    """torchvision's named weights (``DEFAULT``, ``IMAGENET1K_V1`` or ``ResNet18_Weights.X``),
    from torch hub's cache; downloaded only when they are not there (and a network is)."""
    from clrctl.compat import import_torchvision

    models = import_torchvision().models
    try:
        enum = models.get_model_weights(name)
        chosen = models.get_weight(weights) if "." in weights else enum[weights]
    except Exception:  # noqa: BLE001 - KeyError, ValueError: an unknown name
        names = ", ".join(["DEFAULT", *enum.__members__]) if "enum" in locals() else "see torchvision"
        raise ConfigError(f"model.args.weights: torchvision has no weights {weights!r} for {name} ({names})") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(chosen.url).path)
    if not cached.is_file():
        try:
            torch.hub.load_state_dict_from_url(chosen.url, progress=False, map_location="cpu")
        except Exception:  # noqa: BLE001 - offline: URLError, timeouts, refused connections
            raise ConfigError(f"model.args.weights: {chosen} is not in torchvision's cache and could not be "
                              f"downloaded; fetch {chosen.url} and put it at {cached}") from None
    return f"torchvision:{chosen}", read_state_dict(cached, "model.args.weights")


def few_keys(keys: list[str], n: int = 4) -> str:
    """The first ``n`` keys, and how many more."""
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
