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
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clrctl.errors import ConfigError

# Exit codes the launcher passes on from rank 0 (SPEC: 2 bad input, 1 ended badly, 130 interrupted).
_PASSED_ON = (1, 2, 130)


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


def check_batch_size(batch_size: int, world_size: int) -> None:
    """``dataset.batch_size`` is the global batch: it must divide by the world size.
    Called before any process group exists (exit 2)."""
    if world_size > 1 and batch_size % world_size:
        raise ConfigError(f"dataset.batch_size: {batch_size} does not divide by the {world_size} processes "
                          f"(it is the global batch; try {max(world_size, batch_size // world_size * world_size)})")


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
    dist.init_process_group(backend_for(device.type), device_id=device if device.type == "cuda" else None)


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


def tell_path(run) -> None:
    """Rank 0: tell the other ranks its run directory (``run``), or None where it failed to
    make one (the error it raises says why). A no-op in one process."""
    if initialised():
        broadcast(None if run is None else str(run.path))


def main_path() -> Path:
    """The other ranks: rank 0's run directory (:func:`tell_path`)."""
    path = broadcast(None)
    if path is None:
        from clrctl.errors import InputError

        raise InputError("rank 0 could not create the run directory")  # rank 0 said why
    return Path(path)


# ---------------------------------------------------------------------------------------
# Data: each rank's share of every global batch


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi) of rank's share of ``n`` items, as ``torch.tensor_split`` cuts them."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def shard_data(data) -> None:
    """Give this rank its share of each training and validation batch (validation sums are
    reduced in :func:`reduce_eval`; ``head()`` slices stay whole). A no-op in one process."""
    w = world()
    if w.distributed:
        data.train.shard = data.val.shard = (w.rank, w.world_size)


def join(config):
    """This process's device, after joining the process group under torchrun: the batch size
    is checked first, so a bad one exits 2 before any process group exists."""
    from clrctl.device import resolve_device

    check_batch_size(config.dataset.batch_size, world().world_size)
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

    flag = torch.tensor([1.0 if stop else 0.0], dtype=torch.float64, device=loss_sums.device)
    both = torch.cat([loss_sums.to(torch.float64), flag])
    dist.all_reduce(both)
    return both[:-1], bool(both[-1] > 0)


def agree(stop: bool, device) -> bool:
    """Whether any rank asks to stop (a sync point with no losses to reduce)."""
    if not initialised():
        return stop
    import torch

    return bool(reduce_flush(torch.zeros(0, device=device), stop)[1])


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
# Run directories: only the main process writes


class _NullLog:
    def write(self, rows) -> None: ...

    def write_lists(self, rows) -> None: ...

    def flush(self) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


class NullRunDir:
    """What a non-main rank holds for the run directory: the real path (for messages), no writes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoints_dir = self.path / "checkpoints"

    def csv(self, name: str, columns: list[str]) -> _NullLog:
        return _NullLog()

    def save_checkpoint(self, payload: dict[str, Any], name: str, copy: bool = True) -> None: ...

    def write_summary(self, summary: dict[str, Any]) -> None: ...

    def set_status(self, status: str, **fields: Any) -> None: ...

    def write_config(self, *args: Any, **kwargs: Any) -> None: ...


# ---------------------------------------------------------------------------------------
# The launcher: ``clrctl … --nproc N``


def launch(nproc: int, args: list[str]) -> int:
    """Run ``python -m clrctl ARGS`` as ``nproc`` workers on this machine through torch's
    elastic launcher (``torchrun --standalone``); returns the exit code to pass on.

    A SIGINT/SIGTERM to this process is forwarded by the launcher to every worker, which stop
    together at their next host sync; a worker that fails makes the launcher stop the rest."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    logging.disable(logging.ERROR)  # the agent's own log lines: the workers and this function report
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    launcher = get_args_parser().parse_args([
        "--standalone", "--nproc-per-node", str(nproc), "--max-restarts", "0", "--monitor-interval", "0.1",
        "--rdzv-id", uuid.uuid4().hex, "--no-python", sys.executable, "-m", "clrctl", *args,
    ])
    try:
        run(launcher)
    except SignalException:
        return 130
    except ChildFailedError as err:
        codes = {f.local_rank if f.local_rank is not None else 0: f.exitcode for f in err.failures.values()}
        # The rank that failed first decides: the others were stopped by the launcher (130).
        failed = [code for _, code in sorted(codes.items()) if code != 130]
        first = failed[0] if failed else 130
        if first not in _PASSED_ON:  # killed by a signal (negative) or an unexpected code
            ranks = ", ".join(f"rank {r} ({_describe(c)})" for r, c in sorted(codes.items()))
            from clrctl.app import err_console

            err_console.print(f"error: worker failed: {ranks}", highlight=False, soft_wrap=True)
            return 1
        return first
    return 0


def _describe(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit {code}"
