"""clrctl's training loop against a hand-written loop on the same ``Setup`` (issue 9, part 3).

Run:  .venv/bin/python benchmarks/loop_overhead.py [--repeats 10] [--case digits|lenet] [--threads 1]

Both loops train the same data tensors (a ``TensorSource``), the same freshly reset model and
the same optimizer; the hand-written one is what a careful user writes: a (seed, epoch)
randperm per epoch, ``torch.optim.lr_scheduler.CyclicLR`` stepped per batch, no per-step
host sync, one evaluation per epoch. clrctl runs its real ``TrainingRun`` into a temporary
run directory (metrics.csv and epochs.csv rows, train accuracy, checkpoints every epoch,
evaluation once per epoch). The two alternate in one process, best of ``--repeats``; the
ratio is steps/s of clrctl over steps/s of the hand-written loop (1.0 = no overhead).

clrctl's clock stops when its last epoch is reported (evaluated, CSV rows written, the final
checkpoint handed to its writer), the hand-written loop's after its last evaluation. The last
column also counts what a run does once at its very end (summary.json, run.json's status:
two fsynced atomic writes, ~10 ms on a disk), which ``benchmarks/startup.py`` counts too.

``--instructions`` counts instead of timing: each loop runs in a child process under valgrind's
callgrind (after one warm-up run of the same loop), which counts the CPU instructions of the
measured run only (the window opens at ``os.getppid()`` and closes at ``os.getpgrp()``).
Counts repeat to a few parts in 10^4 whatever else the machine does, so this ratio is the
steady one on a shared machine; it counts clrctl's whole ``run_all``, end-of-run files
included. Slow (~50x): about 15 minutes for digits (the default case here); LeNet's
convolutions take about an hour. ``last.pt`` is throttled by wall time, so the child
sets ``train.checkpoint_every`` out of reach: one checkpoint at the end, as in a real run.

Cases (the table of issue 9): digits MLP 64-64, batch 32, 1032 steps (24 epochs); LeNet on
28x28 synthetic uint8 images (MNIST-shaped), batch 128, 192 steps (3 epochs of 8192).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from clrctl.config.schema import Config  # noqa: E402
from clrctl.data.sources import DataBundle, TensorSource, epoch_generator  # noqa: E402
from clrctl.optim.groups import build_groups  # noqa: E402
from clrctl.model.build import build_model  # noqa: E402
from clrctl.optim.optimizers import build_optimizer  # noqa: E402
from clrctl.runs.rundir import RunDir  # noqa: E402
from clrctl.engine.setup import Setup, build_setup  # noqa: E402
from clrctl.engine.step import evaluate  # noqa: E402
from clrctl.runs.lifecycle import TrainingRun  # noqa: E402
from clrctl.track.reporter import Reporter  # noqa: E402


def config(case: str) -> Config:
    common = {"name": f"bench-{case}", "seed": 0, "device": "cpu", "optimizer": {"name": "sgd", "momentum": 0.9},
              "policy": {"name": "triangular", "bounds": [0.01, 0.05], "stepsize": "2 epochs"}}
    if case == "digits":
        return Config.model_validate({**common, "dataset": {"name": "digits", "batch_size": 32},
                                      "model": {"name": "mlp", "hidden": [64, 64]}, "train": {"epochs": 24}})
    return Config.model_validate({**common, "dataset": {"name": "synthetic", "batch_size": 128},
                                  "model": {"name": "lenet"}, "train": {"epochs": 3}})


def make_setup(case: str) -> Setup:
    cfg = config(case)
    if case == "digits":
        return build_setup(cfg)
    torch.manual_seed(0)
    device = torch.device("cpu")
    x = torch.randint(0, 256, (8192 + 1024, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (8192 + 1024,))
    norm = {"mean": (0.1307,), "std": (0.3081,)}
    train = TensorSource(x[:8192], y[:8192], 128, device, shuffle=True, seed=0, **norm)
    val = TensorSource(x[8192:], y[8192:], 1024, device, **norm)
    data = DataBundle(train, val, (1, 28, 28), 10, "synthetic-28x28")
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    return Setup(cfg, 0, device, data, model, build_groups(model, cfg.optimizer), cfg.plan(), len(train))


def hand_written(setup: Setup) -> float:
    """Seconds for the whole run: what a careful user writes."""
    model, data, loss_fn = setup.model, setup.data, setup.loss_fn
    policy = setup.config.policy
    optimizer = build_optimizer(setup.config.optimizer, model.parameters(), policy.base_lr)
    schedule = torch.optim.lr_scheduler.CyclicLR(optimizer, policy.base_lr, policy.max_lr,
                                                 step_size_up=2 * setup.steps_per_epoch, cycle_momentum=False)
    train, size = data.train, data.train.batch_size
    start = time.perf_counter()
    model.train()
    step = 0
    for epoch in range(setup.epochs):
        order = torch.randperm(train.num_samples, generator=epoch_generator(setup.seed, epoch))
        for begin in range(0, train.num_samples, size):
            if step >= setup.total_steps:
                break
            index = order[begin : begin + size]
            x, y = train._normalise(train.x[index]), train.y[index]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
        evaluate(model, data.val, loss_fn)
    return time.perf_counter() - start


class _LastEpoch(Reporter):
    """Notes when the last epoch was reported: its evaluation, CSV rows and checkpoint done."""

    def epoch(self, row) -> None:
        self.at = time.perf_counter()


def clrctl_loop(setup: Setup, root: Path, index: int) -> tuple[float, float]:
    """Seconds of clrctl's TrainingRun.run_all (metrics, checkpoints and all; no plots): to the
    report of the last epoch, and to the end (summary.json and run.json's status written)."""
    run = RunDir.create(root, "bench", root / f"run-{index}")
    run.begin({"kind": "train", "status": "running"}, setup.config.to_dict())
    clock = _LastEpoch()
    loop = TrainingRun(setup, run, clock)
    start = time.perf_counter()
    loop.run_all()
    return clock.at - start, time.perf_counter() - start


def measure(case: str, repeats: int) -> dict[str, float]:
    """steps, steps/s (best of ``repeats``) of the hand-written loop, of clrctl's loop and of
    clrctl's whole run_all, and the median over rounds of each round's ratio: the two loops of
    a round run back to back, so a slow spell of a shared machine hits both of them."""
    setup = make_setup(case)
    initial = {k: v.clone() for k, v in setup.model.state_dict().items()}
    best = {"hand": float("inf"), "clrctl": float("inf"), "clrctl+end": float("inf")}
    paired: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats + 1):  # the first round warms both up and is not counted
            seconds = {}
            for name in ("hand", "clrctl") if i % 2 == 0 else ("clrctl", "hand"):
                setup.model.load_state_dict(initial)
                if name == "hand":
                    seconds["hand"] = hand_written(setup)
                else:
                    seconds.update(zip(("clrctl", "clrctl+end"), clrctl_loop(setup, Path(tmp), i)))
            if i:
                paired.append(seconds["hand"] / seconds["clrctl"])
                for key, value in seconds.items():
                    best[key] = min(best[key], value)
    steps = setup.total_steps
    return {"steps": steps, "hand": steps / best["hand"], "clrctl": steps / best["clrctl"],
            "whole": steps / best["clrctl+end"], "median_ratio": statistics.median(paired)}


def count_one(case: str, loop: str) -> None:
    """(Child of --instructions, under callgrind) a warm-up run, then the measured one."""
    import gc
    import os

    from clrctl.runs.lifecycle import TrainingRun as _Run

    _Run._plots = lambda self: None  # the loop, not matplotlib: plots are drawn once a run (startup.py)
    setup = make_setup(case)
    train = setup.config.train.model_copy(update={"checkpoint_every": 1e12})
    setup.config = setup.config.model_copy(update={"train": train})
    initial = {k: v.clone() for k, v in setup.model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            setup.model.load_state_dict(initial)
            gc.collect()
            if i:
                os.getppid()  # callgrind --zero-before: the window opens
            hand_written(setup) if loop == "hand" else clrctl_loop(setup, Path(tmp), i)
            if i:
                os.getpgrp()  # callgrind --dump-before: the window closes


def count_instructions(case: str) -> dict[str, int]:
    """Instructions of one run of each loop (callgrind), by loop name; and the steps."""
    import os
    import re
    import shutil
    import subprocess

    if shutil.which("valgrind") is None:
        sys.exit("--instructions needs valgrind (apt install valgrind)")
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for loop in ("hand", "clrctl"):
            out = Path(tmp) / f"{loop}.out"
            cmd = ["valgrind", "--tool=callgrind", "--zero-before=os_getppid", "--dump-before=os_getpgrp",
                   f"--callgrind-out-file={out}", sys.executable, __file__, "--count-one", loop, "--case", case,
                   "--threads", "1"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "PYTHONHASHSEED": "0"})
            window = Path(f"{out}.1").read_text(errors="replace")
            counts[loop] = int(re.search(r"^summary: (\d+)$", window, re.M).group(1))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--case", choices=["digits", "lenet"], action="append")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 is steadier on a shared, loaded machine")
    parser.add_argument("--instructions", action="store_true",
                        help="count CPU instructions under valgrind instead of timing (steady on a shared machine)")
    parser.add_argument("--count-one", choices=["hand", "clrctl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    labels = {"digits": "digits MLP 64-64, batch 32", "lenet": "LeNet 28×28, batch 128"}
    if args.count_one:
        return count_one(args.case[0], args.count_one)
    if args.instructions:
        print(f"torch {torch.__version__}, instructions of one run after a warm-up (callgrind)")
        print("| case | hand-written | clrctl | ratio |\n| --- | --- | --- | --- |")
        for case in args.case or ["digits"]:  # (LeNet's convolutions: about an hour under callgrind)
            counts, steps = count_instructions(case), make_setup(case).total_steps
            print(f"| {labels[case]}, {steps} steps | {counts['hand'] / steps / 1e6:.3f} M/step "
                  f"| {counts['clrctl'] / steps / 1e6:.3f} M/step | {counts['hand'] / counts['clrctl']:.3f} |", flush=True)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}, alternating")
    print("| case | hand-written | clrctl | ratio | median of the rounds' ratios | ratio with the run's last files |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case in args.case or ["digits", "lenet"]:
        m = measure(case, args.repeats)
        print(f"| {labels[case]}, {m['steps']} steps | {m['hand']:.1f} steps/s | {m['clrctl']:.1f} steps/s "
              f"| {m['clrctl'] / m['hand']:.3f} | {m['median_ratio']:.3f} | {m['whole'] / m['hand']:.3f} |", flush=True)

if __name__ == "__main__":
    main()
