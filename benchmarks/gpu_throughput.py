"""Images per second of clrctl's training loop against a hand-written loop: resnet20 on
CIFAR-shaped synthetic data (uint8 3x32x32 on the device), for each combination of
``train.precision`` x ``train.channels_last`` x ``train.compile`` (issue 9, part 2).

Run on a GPU:  .venv/bin/python benchmarks/gpu_throughput.py [--steps 200] [--batch-size 512] [--repeats 3]
Smoke test on a CPU:  .venv/bin/python benchmarks/gpu_throughput.py --device cpu --steps 4 --batch-size 32 \\
                        --repeats 1 --no-compile

Both loops train the same model from the same weights with the same optimizer (clrctl's SGD:
fused on CUDA) and a CyclicLR; the hand-written loop uses torch.autocast, a GradScaler for
fp16 only, channels_last inputs and torch.compile exactly as the option says. clrctl runs its
real TrainingRun (metrics rows, train accuracy, a checkpoint at the end) with one
evaluation at the end, like the hand-written loop. One warm-up run of each (compilation
included) is not counted; then the two alternate, best of ``--repeats``. Prints a Markdown
table with the GPU's name.
"""

from __future__ import annotations

import argparse
import itertools
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
from clrctl.engine.setup import Setup  # noqa: E402
from clrctl.engine.step import FastPath, evaluate  # noqa: E402
from clrctl.runs.lifecycle import TrainingRun  # noqa: E402

CIFAR = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)}


def make_setup(device, steps: int, batch: int, precision: str, channels_last: bool, compile_: bool) -> Setup:
    cfg = Config.model_validate({
        "name": "gpu-bench", "seed": 0, "device": device.type,
        "dataset": {"name": "synthetic", "batch_size": batch}, "model": {"name": "resnet20"},
        "optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4},
        "policy": {"name": "triangular", "bounds": [0.01, 0.1], "stepsize": max(1, steps // 2)},
        "train": {"steps": steps, "log_every": 50, "precision": precision, "channels_last": channels_last,
                  "compile": compile_},
    })
    generator = torch.Generator().manual_seed(0)
    n = steps * batch
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    train = TensorSource(x, y, batch, device, shuffle=True, seed=0, **CIFAR)
    val = TensorSource(x[:1024], y[:1024], 1024, device, **CIFAR)
    data = DataBundle(train, val, (3, 32, 32), 10, "synthetic-cifar")
    torch.manual_seed(0)
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(device)
    return Setup(cfg, 0, device, data, model, build_groups(model, cfg.optimizer), cfg.plan(), len(train))


def hand_written(setup: Setup) -> float:
    fast = FastPath(setup.config.train, setup.device)  # only to read the options: no clrctl code runs
    model, data, loss_fn = setup.model, setup.data, setup.loss_fn
    if fast.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if fast.compile else model
    optimizer = build_optimizer(setup.config.optimizer, model.parameters(), 0.01)
    schedule = torch.optim.lr_scheduler.CyclicLR(optimizer, 0.01, 0.1, step_size_up=max(1, setup.total_steps // 2),
                                                 cycle_momentum=False)
    scaler = torch.amp.GradScaler(setup.device.type, enabled=fast.dtype is torch.float16)
    train, size = data.train, data.train.batch_size
    _sync(setup.device)
    start = time.perf_counter()
    model.train()
    order = torch.randperm(train.num_samples, generator=epoch_generator(0, 0)).to(setup.device)
    for begin in range(0, setup.total_steps * size, size):
        index = order[begin : begin + size]
        x, y = train._normalise(train.x[index]), train.y[index]
        if fast.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(setup.device.type, dtype=fast.dtype or torch.float16, enabled=fast.dtype is not None):
            loss = loss_fn(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
    evaluate(model, data.val, loss_fn)
    _sync(setup.device)
    return time.perf_counter() - start


def clrctl_loop(setup: Setup, root: Path, tag: str) -> float:
    run = RunDir.create(root, "bench", root / tag)
    run.begin({"kind": "train", "status": "running"}, setup.config.to_dict())
    loop = TrainingRun(setup, run)
    _sync(setup.device)
    start = time.perf_counter()
    loop.run_all()
    _sync(setup.device)
    return time.perf_counter() - start


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="leave out the compile=true rows")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, resnet20, batch {args.batch_size}, {args.steps} steps, "
          f"best of {args.repeats}")
    print("| precision | channels_last | compile | hand-written img/s | clrctl img/s | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    compiles = [False] if args.no_compile else [False, True]
    images = args.steps * args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        for k, (precision, channels_last, compile_) in enumerate(
                itertools.product(["fp32", "bf16", "fp16"], [False, True], compiles)):
            setup = make_setup(device, args.steps, args.batch_size, precision, channels_last, compile_)
            initial = {key: v.clone() for key, v in setup.model.state_dict().items()}
            best = {"hand": float("inf"), "clrctl": float("inf")}
            for i in range(args.repeats + 1):  # round 0 warms up (and compiles): not counted
                for who in ("hand", "clrctl") if i % 2 == 0 else ("clrctl", "hand"):
                    setup.model.load_state_dict(initial)
                    seconds = hand_written(setup) if who == "hand" else clrctl_loop(setup, Path(tmp), f"{k}-{i}")
                    if i:
                        best[who] = min(best[who], seconds)
            hand, ours = images / best["hand"], images / best["clrctl"]
            print(f"| {precision} | {channels_last} | {compile_} | {hand:,.0f} | {ours:,.0f} | {ours / hand:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
