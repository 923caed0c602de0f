"""N seeds trained vectorised (``--vectorize``: one stacked model) against N sequential runs (issue 21).

Run:  .venv/bin/python benchmarks/vectorize.py [--case digits|lenet] [--seeds 1,2,4,8,16,32]
          [--threads 1 --threads 2] [--repeats 3] [--no-memory] [--whole]

Both sides do the same work in one process: N seeds' real runs (clrctl's TrainingRun for each
seed in turn; the vectorised group's GroupRun for all at once) into temporary run directories
— metrics.csv and epochs.csv rows, evaluations, checkpoints, summaries; no plots (each side
draws one set per seed, the same cost: ``--whole`` counts them). Setups (data, models) are
built once, outside the clock; each round starts every model from its seed's initialisation.
The two alternate, best of ``--repeats``; speed-up = sequential seconds / vectorised seconds.

Peak memory: each (case, N, side) once more in a child process, its peak resident set during
training (``VmHWM``, reset through ``/proc/self/clear_refs`` once data and models are built)
less its resident set then: what training adds (Linux only).

``--steps-only``: the training steps alone (forward, backward, optimizer step over one epoch of
each seed's batches; no rows, evaluations or files), N models in turn against the stack.

``--whole``: the whole process, ``clrctl train configs/digits-triangular2.yaml --seeds 0..7
train.epochs=40`` with and without ``--vectorize`` (plots and all), alternating, best of
``--repeats``.

Cases: the digits MLP 64-64, batch 32, 8 epochs (344 steps a seed); LeNet on 28x28 synthetic
uint8 images (MNIST-shaped), batch 128, 2048 samples a seed, 1 epoch (16 steps a seed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from clrctl.config.schema import Config  # noqa: E402
from clrctl.data.sources import DataBundle, TensorSource  # noqa: E402
from clrctl.engine.setup import Setup, build_setup  # noqa: E402
from clrctl.engine.strategy import Strategy  # noqa: E402
from clrctl.model.build import build_model  # noqa: E402
from clrctl.optim.groups import build_groups  # noqa: E402
from clrctl.runs.lifecycle import TrainingRun  # noqa: E402
from clrctl.runs.rundir import RunDir  # noqa: E402
from clrctl.runs.vectorized import GroupRun, SeedRun  # noqa: E402

TrainingRun._plots = lambda self: None  # the same per seed on both sides: --whole counts them

LABELS = {"digits": "digits MLP 64-64, batch 32, 344 steps", "lenet": "LeNet 28×28, batch 128, 16 steps"}


def config(case: str, seed: int) -> Config:
    common = {"name": f"bench-{case}", "seed": seed, "device": "cpu", "optimizer": {"name": "sgd", "momentum": 0.9},
              "policy": {"name": "triangular", "bounds": [0.01, 0.05], "stepsize": "1 epochs"},
              "train": {"epochs": 8 if case == "digits" else 1}}
    if case == "digits":
        return Config.model_validate({**common, "dataset": {"name": "digits", "batch_size": 32},
                                      "model": {"name": "mlp", "hidden": [64, 64]}})
    return Config.model_validate({**common, "dataset": {"name": "synthetic", "batch_size": 128},
                                  "model": {"name": "lenet"}})


_LENET_DATA: dict[str, torch.Tensor] = {}


def make_setup(case: str, seed: int) -> Setup:
    cfg = config(case, seed)
    if case == "digits":
        return build_setup(cfg)
    if not _LENET_DATA:  # one data set, each seed its own order (as the built-in data sets)
        gen = torch.Generator().manual_seed(0)
        _LENET_DATA["x"] = torch.randint(0, 256, (2048 + 512, 1, 28, 28), dtype=torch.uint8, generator=gen)
        _LENET_DATA["y"] = torch.randint(0, 10, (2048 + 512,), generator=gen)
    x, y = _LENET_DATA["x"], _LENET_DATA["y"]
    device = torch.device("cpu")
    norm = {"mean": (0.1307,), "std": (0.3081,)}
    train = TensorSource(x[:2048], y[:2048], 128, device, shuffle=True, seed=seed, **norm)
    val = TensorSource(x[2048:], y[2048:], 512, device, **norm)
    data = DataBundle(train, val, (1, 28, 28), 10, "synthetic-28x28")
    torch.manual_seed(seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    return Setup(cfg, seed, device, data, model, build_groups(model, cfg.optimizer), cfg.plan(), len(train))


def _run_dir(root: Path, name: str, setup: Setup) -> RunDir:
    run = RunDir.create(root, "bench", root / name)
    run.begin({"kind": "train", "status": "running"}, setup.config.to_dict())
    return run


def sequential(setups: list[Setup], root: Path) -> float:
    start = time.perf_counter()
    for k, setup in enumerate(setups):
        TrainingRun(setup, _run_dir(root, f"seq-{k}", setup)).run_all()
    return time.perf_counter() - start


def vectorized(setups: list[Setup], root: Path) -> float:
    start = time.perf_counter()
    runs = [SeedRun(s, _run_dir(root, f"vec-{k}", s), strategy=Strategy()) for k, s in enumerate(setups)]
    GroupRun(runs, root).run_all()
    return time.perf_counter() - start


def measure(case: str, n: int, repeats: int) -> dict[str, float]:
    setups = [make_setup(case, seed) for seed in range(n)]
    initial = [{k: v.clone() for k, v in s.model.state_dict().items()} for s in setups]
    best = {"seq": float("inf"), "vec": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats + 1):  # the first round warms both up and is not counted
            for side in ("vec", "seq") if i % 2 == 0 else ("seq", "vec"):
                for setup, state in zip(setups, initial):
                    setup.model.load_state_dict(state)
                seconds = (vectorized if side == "vec" else sequential)(setups, Path(tmp) / f"{side}-{i}")
                if i:
                    best[side] = min(best[side], seconds)
    return best


def steps_only(case: str, n: int, repeats: int) -> dict[str, float]:
    """Seconds of the training steps alone (one epoch of each seed's batches: forward,
    backward, optimizer step; no rows, evaluations or files): N models one after another
    against the stack, alternating, best of ``repeats``."""
    from clrctl.data.sources import StackedBatches
    from clrctl.engine.stack import ModelStack
    from clrctl.engine.step import forward_backward
    from clrctl.engine.strategy import VectorizedStrategy

    setups = [make_setup(case, seed) for seed in range(n)]
    sgd = lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, foreach=True)  # noqa: E731
    best = {"seq": float("inf"), "vec": float("inf")}
    for i in range(repeats + 1):
        for side in ("vec", "seq") if i % 2 == 0 else ("seq", "vec"):
            if side == "seq":
                optimizers = [sgd(s.model.parameters()) for s in setups]
                start = time.perf_counter()
                for setup, optimizer in zip(setups, optimizers):
                    for x, y in setup.data.train.batches(0):
                        forward_backward(setup.model, optimizer, x, y, setup.loss_fn)
            else:
                stack = ModelStack([s.model for s in setups])
                optimizer = sgd(stack.holder.parameters())
                step = VectorizedStrategy(stack).stacked_stepper(setups[0].loss_fn)
                batches = StackedBatches([s.data.train for s in setups])
                start = time.perf_counter()
                for xs, ys in batches.batches(0):
                    step(optimizer, xs, ys)
            seconds = time.perf_counter() - start
            if i:
                best[side] = min(best[side], seconds)
    return best


def memory_child(case: str, n: int, side: str, threads: int) -> None:
    """(Child) build N setups, then train them once; prints the peak RSS growth in MiB."""
    torch.set_num_threads(threads)
    setups = [make_setup(case, seed) for seed in range(n)]
    Path("/proc/self/clear_refs").write_text("5")  # (Linux: the peak resident set starts again from now)
    before = _status_kib("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        (vectorized if side == "vec" else sequential)(setups, Path(tmp))
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - before) / 1024}))


def _status_kib(key: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key + ":"))
    return int(line.split()[1])


def peak_memory(case: str, n: int, side: str, threads: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-child", case, str(n), side, str(threads)],
                         check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def whole(repeats: int) -> dict[str, float]:
    """Seconds of the whole ``clrctl train`` process, with and without --vectorize."""
    best = {"seq": float("inf"), "vec": float("inf")}
    cmd = [sys.executable, "-m", "clrctl", "train", "configs/digits-triangular2.yaml", "--seeds", "0..7",
           "train.epochs=40", "-q"]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for side in ("vec", "seq") if i % 2 == 0 else ("seq", "vec"):
                extra = ["--vectorize"] if side == "vec" else []
                start = time.perf_counter()
                subprocess.run([*cmd, *extra, "--runs-root", str(Path(tmp) / f"{side}-{i}")], check=True, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                best[side] = min(best[side], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["digits", "lenet"], action="append")
    parser.add_argument("--seeds", default="1,2,4,8,16,32")
    parser.add_argument("--threads", type=int, action="append")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--whole", action="store_true", help="only the whole-process measurement")
    parser.add_argument("--steps-only", action="store_true", help="only the training steps (no rows, files)")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        case, n, side, threads = args.memory_child
        return memory_child(case, int(n), side, int(threads))
    if args.whole:
        best = whole(args.repeats)
        print(f"whole process, clrctl train configs/digits-triangular2.yaml --seeds 0..7 train.epochs=40, "
              f"{os.environ.get('OMP_NUM_THREADS', 'default')} threads, best of {args.repeats}:")
        print(f"sequential {best['seq']:.1f} s, --vectorize {best['vec']:.1f} s, speed-up {best['seq'] / best['vec']:.2f}×")
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.steps_only:
        print(f"torch {torch.__version__}, training steps only (one epoch a seed), best of {args.repeats}, alternating")
        print("| case | threads | N | sequential | vectorised | speed-up |\n| --- | --- | --- | --- | --- | --- |")
        for case in args.case or ["digits", "lenet"]:
            for threads in args.threads or [1, 2]:
                torch.set_num_threads(threads)
                for n in seeds:
                    best = steps_only(case, n, args.repeats)
                    print(f"| {LABELS[case].rsplit(',', 1)[0]} | {threads} | {n} | {best['seq']:.3f} s "
                          f"| {best['vec']:.3f} s | {best['seq'] / best['vec']:.2f}× |", flush=True)
        return
    print(f"torch {torch.__version__}, best of {args.repeats}, alternating; peak memory: RSS growth of a child")
    print("| case | threads | N | sequential | vectorised | speed-up | peak MiB sequential | peak MiB vectorised |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for case in args.case or ["digits", "lenet"]:
        for threads in args.threads or [1, 2]:
            torch.set_num_threads(threads)
            for n in seeds:
                best = measure(case, n, args.repeats)
                mem = ("-", "-") if args.no_memory else tuple(f"{peak_memory(case, n, side, threads):.0f}"
                                                             for side in ("seq", "vec"))
                print(f"| {LABELS[case]} | {threads} | {n} | {best['seq']:.2f} s | {best['vec']:.2f} s "
                      f"| {best['seq'] / best['vec']:.2f}× | {mem[0]} | {mem[1]} |", flush=True)


if __name__ == "__main__":
    main()
