"""Checkpoints: everything needed to continue a run bit-for-bit on CPU — model, optimizer,
scheduler, AMP scaler, counters and every RNG state — written atomically (temporary file,
then rename) so a crash mid-write never leaves a torn ``last.pt``."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clrctl.rundir import atomic_file


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def snapshot(obj: Any) -> Any:
    """A copy of a checkpoint payload that later steps cannot change: tensors cloned (on their
    device: no host sync), dicts, lists and tuples rebuilt, everything else (numbers,
    strings, fresh RNG states) kept."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {key: snapshot(value) for key, value in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(snapshot(value) for value in obj)
    return obj


def serialise(payload: dict[str, Any]) -> bytes:
    """``payload`` as ``torch.save`` writes it (a snapshot: later steps do not change it)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    # No fsync (as before): best.pt is saved at every improving evaluation; the rename alone
    # keeps an interrupted or killed process from leaving a torn file.
    with atomic_file(path, "wb", fsync=False) as handle:
        torch.save(payload, handle)


def load(path: Path, device: torch.device) -> dict[str, Any]:
    # Our own files: they hold numpy/python RNG states, which weights_only=True refuses.
    return torch.load(path, map_location=device, weights_only=False)
