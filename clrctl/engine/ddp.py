"""Several processes: the process group, the one ``is_main`` seam, and the launcher.

clrctl runs DistributedDataParallel on PyTorch's own engine: ``clrctl train CONFIG --nproc N``
starts N workers through ``torch.distributed.run`` (the code behind ``torchrun``), and
``torchrun --nproc-per-node N -m clrctl train CONFIG`` works the same way on any number of
machines. A worker knows it is one from torchrun's environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``); without it everything here is a no-op and the one-process path is untouched.

- ``dataset.batch_size`` is the global batch: every rank takes its contiguous share of each
  batch of the same (seed, epoch) permutation (:func:`shard_data`), so an optimizer step sees
  the same samples as in one process. The loss of a rank's share is weighted by its size
  (:func:`loss_weight`) so that DDP's gradient average is the global batch's mean gradient.
- Only the main process writes (:func:`is_main`; the run directory of the others is a
  :class:`NullRunDir`); validation sums and the logged losses are reduced over all ranks.
- Stopping is agreed: a signal, a diverged loss or an error on one rank is folded into the
  one reduction of each host sync (:func:`reduce_flush`), so all ranks stop at the same step
  (Lightning's ``should_stop`` broadcast). A rank that dies makes the launcher stop the rest.
- Failing is bounded and told truly: a collective waits at most :func:`timeout_s`; workers stop
  when their launcher dies (:func:`stop_with_launcher`); the launcher shows the first failing
  rank's own error and marks the run ``failed`` when a failure left it ``running``.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

from clrctl.data.sources import shard_bounds  # noqa: F401 (the share arithmetic is the data's)
from clrctl.errors import ConfigError, InputError

TIMEOUT_ENV = "CLRCTL_DDP_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world() -> World:
    """This process's place, from torchrun's environment (one process without it)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return World()
    return World(rank, size, local) if size > 1 else World()


def is_main() -> bool:
    """The one seam: whether this process writes files and prints results."""
    return world().is_main


def check_batch_size(batch_size: int, world_size: int, accumulate: int = 1) -> None:
    """``dataset.batch_size`` is the global batch: it must divide by the world size (and by
    ``train.accumulate`` x the world size). Called before any process group exists (exit 2)."""
    if world_size > 1 and accumulate > 1:
        from clrctl.config.schema import check_micro_batches

        try:
            check_micro_batches(batch_size, accumulate, world_size)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if world_size > 1 and batch_size % world_size:
        raise ConfigError(f"dataset.batch_size: {batch_size} does not divide by the {world_size} processes "
                          f"(it is the global batch; try {max(world_size, batch_size // world_size * world_size)})")


def timeout_s() -> float:
    """Seconds a collective operation may wait for the other ranks before the run fails
    (``CLRCTL_DDP_TIMEOUT``, default 600; torch's own default is 30 minutes). An environment
    variable, not a config key: it belongs to the machines, and every torchrun worker inherits it."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{TIMEOUT_ENV}: expected a positive number of seconds, got {text[:40]!r}")
    return seconds


# ---------------------------------------------------------------------------------------
# The process group (workers only)


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def place(device):
    """The device of this rank: ``cuda:LOCAL_RANK`` for CUDA under DDP (one GPU per local rank)."""
    import torch

    w = world()
    if w.distributed and device.type == "cuda":
        device = torch.device("cuda", w.local_rank)
        torch.cuda.set_device(device)
    return device


def init(device) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU); a no-op in one process or if joined."""
    import torch.distributed as dist

    if not world().distributed or dist.is_initialized():
        return
    dist.init_process_group(backend_for(device.type), device_id=device if device.type == "cuda" else None,
                            timeout=timedelta(seconds=timeout_s()))


def initialised() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def record() -> dict[str, Any]:
    """What run.json records: ``world_size`` and ``backend`` (None in one process)."""
    if not initialised():
        return {"world_size": 1, "backend": None}
    import torch.distributed as dist

    return {"world_size": dist.get_world_size(), "backend": dist.get_backend()}


def shutdown() -> None:
    if initialised():
        import torch.distributed as dist

        dist.destroy_process_group()


def wrap(model, device):
    """The model DDP trains (the unwrapped one stays in the Setup and in checkpoints)."""
    if not initialised():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a run directory's path, a checkpoint)."""
    if not initialised():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_path() -> Path:
    """The other ranks: rank 0's run directory (:func:`clrctl.runs.launch.tell_path`)."""
    path = broadcast(None)
    if path is None:
        raise EchoedError("rank 0 could not create the run directory")  # rank 0 said why
    return Path(path)


# ---------------------------------------------------------------------------------------
# Data: each rank's share of every global batch


def shard_data(data) -> None:
    """Give this rank its share of each training and validation batch (validation sums are
    reduced in :func:`reduce_eval`; ``head()`` slices stay whole). A no-op in one process."""
    w = world()
    if w.distributed:
        data.train.shard = data.val.shard = (w.rank, w.world_size)


def join(config):
    """This process's device, after joining the process group under torchrun: the batch size
    is checked first, so a bad one exits 2 before any process group exists."""
    from clrctl.engine.device import resolve_device

    check_batch_size(config.dataset.batch_size, world().world_size, config.train.accumulate)
    stop_with_launcher()
    device = place(resolve_device(config.device))
    init(device)
    return device


def loss_weight(local: int, global_: int) -> float:
    """Factor on a rank's mean loss so that DDP's average of gradients over ranks is the
    gradient of the global batch's mean loss (shares differ in a last, partial batch)."""
    return local * world().world_size / global_


# ---------------------------------------------------------------------------------------
# Reductions at the loop's host syncs


def reduce_flush(loss_sums, stop: bool):
    """(summed losses over ranks, whether any rank asked to stop): one collective per host
    sync, the stop flag riding along (all ranks then stop at the same step)."""
    import torch
    import torch.distributed as dist

    stop = stop or (_watch["poll"] and _orphaned())  # (where no signal comes when the launcher dies)
    flag = torch.tensor([1.0 if stop else 0.0], dtype=torch.float64, device=loss_sums.device)
    both = torch.cat([loss_sums.to(torch.float64), flag])
    dist.all_reduce(both)
    return both[:-1], bool(both[-1] > 0)


def reduce_eval(loss_sum, correct, seen: int, device) -> tuple[float, float, int]:
    """Validation sums of all ranks' shards: the same numbers as one process."""
    import torch
    import torch.distributed as dist

    total = torch.stack([torch.as_tensor(loss_sum, dtype=torch.float64, device=device),
                         torch.as_tensor(correct, dtype=torch.float64, device=device),
                         torch.tensor(float(seen), dtype=torch.float64, device=device)])
    dist.all_reduce(total)
    loss, hits, count = total.tolist()
    return loss, hits, int(count)


# ---------------------------------------------------------------------------------------
# A worker and its launcher (clrctl.runs.launch): a launcher that dies stops its workers

LAUNCHER_PID = "CLRCTLLAUNCHER_PID"  # set by launch() for its workers: whom they answer to,
LAUNCH_DIR = "CLRCTLLAUNCH_DIR"  # and where they leave their errors and rank 0 its run directory
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PARENT_GONE = signal.SIGHUP  # the parent-death signal: "hang up", turned into one SIGTERM
# This worker's launcher (or torchrun's agent) once it watches it, and whether by polling
# (no parent-death signal outside Linux); both mechanisms at once could send two SIGTERMs.
_watch: dict[str, Any] = {"parent": None, "poll": False}
# How gloo reports a peer that went away: a consequence of that peer's failure, not a cause.
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


class EchoedError(InputError):
    """What a rank raises because another rank failed (that rank reports its own error)."""


def _launcher() -> Optional[tuple[int, Path]]:
    """(pid, folder) of the ``clrctl … --nproc`` that started this worker; None under torchrun."""
    pid, folder = os.environ.get(LAUNCHER_PID, ""), os.environ.get(LAUNCH_DIR)
    return (int(pid), Path(folder)) if pid.isdigit() and folder else None


def supervised() -> Optional[Path]:
    """The launcher's folder while the launcher that started this worker is alive."""
    launcher = _launcher()
    return launcher[1] if launcher and os.getppid() == launcher[0] else None


def stop_with_launcher() -> None:
    """An elastic worker (of ``clrctl … --nproc`` or torchrun) stops as if sent SIGTERM when
    its launcher dies, even by ``kill -9``: Linux signals it (prctl's parent-death signal);
    elsewhere :func:`reduce_flush` sees the parent gone at the next sync."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or _watch["parent"] is not None:
        return
    launcher = _launcher()
    _watch["parent"] = launcher[0] if launcher else os.getppid()
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        import ctypes

        signal.signal(_PARENT_GONE, _on_parent_gone)
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, _PARENT_GONE, 0, 0, 0)
    else:
        _watch["poll"] = True
    if _orphaned():  # it died before the prctl: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


def _on_parent_gone(_signum: int, _frame: Any) -> None:
    """The kernel sends the parent-death signal each time a thread of the parent ends (a dying
    launcher's threads end one by one): one SIGTERM, to the handler in place, once the parent
    process itself is gone (a second SIGTERM would mean "stop now", without a checkpoint)."""
    if _orphaned():
        signal.signal(_PARENT_GONE, signal.SIG_IGN)
        os.kill(os.getpid(), signal.SIGTERM)


def _orphaned() -> bool:
    return _watch["parent"] is not None and os.getppid() != _watch["parent"]


def timed_out(err: BaseException) -> bool:
    """A collective that waited :func:`timeout_s` for another rank (gloo raises a RuntimeError)."""
    text = str(err)
    return isinstance(err, RuntimeError) and ("gloo" in text or "NCCL" in text) and "timed out" in text.lower()
