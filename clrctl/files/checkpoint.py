"""Checkpoints: everything needed to continue a run bit-for-bit on CPU — model, optimizer,
scheduler, AMP scaler, counters and every RNG state — written atomically (temporary file,
then rename) so a crash mid-write never leaves a torn ``last.pt``. They hold tensors and plain
containers only, and every ``.pt`` file clrctl reads is loaded as data (:func:`load`): a
checkpoint from someone else can hold no code that runs."""

from __future__ import annotations

import io
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clrctl.errors import InputError
from clrctl.files.atomic import atomic_file


def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain containers, all that ``torch.load(weights_only=True)``
    reads: numpy's state (a tuple holding an ndarray) is stored as the list of its pieces."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]  # (older checkpoints: numpy's own tuple, with an ndarray)
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"].cpu())  # (map_location may have moved it to the GPU)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


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


# What checkpoints written before RNG states were plain lists need: numpy's RNG state held an
# ndarray (numpy 2 pickles it from numpy._core, numpy 1 from numpy.core). Rebuilding an array
# runs no code, and its items go through the same restricted unpickler.
_NUMPY_ARRAY = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), np._core.multiarray._reconstruct,
                (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
_ALLOWED_NAMES = {"numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct",
                  "numpy.core.multiarray._reconstruct"}


def load(path: Path, device: torch.device | str = "cpu") -> Any:
    """A ``.pt`` file read as data only: ``torch.load(weights_only=True)`` (tensors, numbers,
    strings and containers; numpy arrays too, for older checkpoints), never code. Anything
    else — a file that needs other globals, an empty, truncated or foreign file — is one
    InputError line naming the file."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except OSError as err:  # missing, a directory, no permission
        raise InputError(f"cannot read {path} ({err.strerror or err})") from None
    with handle:
        try:
            # (torch warns, in several lines, of pickle protocols it reads with care: the load
            # succeeds, or fails with the one line below)
            with torch.serialization.safe_globals(_NUMPY_ARRAY), warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
                return torch.load(handle, map_location=device, weights_only=True)
        except Exception as err:  # noqa: BLE001 - pickle, zip, EOF and torch errors alike: unreadable
            raise InputError(_why_unreadable(path, err)) from None


def _why_unreadable(path: Path, err: Exception) -> str:
    if path.is_file() and path.stat().st_size == 0:
        return f"cannot read {path}: the file is empty (a write cut short?)"
    detail = f"{type(err).__name__}: {_first_sentence(err)}"
    if isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err).lower():
        reason = _unpickler_reason(str(err))
        if "GLOBAL" in reason or "allowlisted" in reason:  # a function or class to call: code
            needed = ", ".join(_unsafe_globals(path)[:4]) or reason
            return (f"refused to load {path}: it needs more than tensors and plain data ({needed}), which could "
                    "run code; clrctl loads .pt files with torch.load(weights_only=True)")
        detail = reason  # garbage the unpickler cannot parse ("Unsupported operand 18")
    # (torch's messages run to several lines, and a cut zip file can raise a bare OSError)
    return f"cannot read {path}: truncated, corrupt or not a torch file ({detail})"


def _unsafe_globals(path: Path) -> list[str]:
    """The globals a file names that are not allowed (read without running any of them)."""
    try:
        return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in _ALLOWED_NAMES]
    except Exception:  # noqa: BLE001 - not a zip file (torch's legacy format): no list
        return []


_TORCH_ADVICE = ("Weights only load failed", "(1)", "(2)", "Check the documentation", "Please file an issue")


def _unpickler_reason(message: str) -> str:
    """torch's own reason ("Unsupported operand 18", "… unsupported GLOBAL posix.system …"),
    without the advice around it in its many-line message."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(_TORCH_ADVICE)]
    reason = reasons[0] if reasons else (lines[0] if lines else "unknown")
    return reason.partition("WeightsUnpickler error:")[2].strip() or reason


def _first_sentence(err: BaseException) -> str:
    return first_line(err).split(". ")[0].rstrip(".")


def first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
