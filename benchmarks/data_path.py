"""Why clrctl holds in-memory data sets as device tensors: one epoch of batches from
``TensorSource`` (shuffle + index on the device) against a torch ``DataLoader`` over the same
tensors (per-sample ``__getitem__`` + collate), with and without a small MLP step.

Run:  .venv/bin/python benchmarks/data_path.py [--dataset digits|synthetic] [--repeats 5]
Prints the best-of-N wall time of each path and their ratio, measured side by side.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from clrctl.config.schema import DatasetConfig, ModelConfig, OptimizerConfig
from clrctl.data.datasets import build_data
from clrctl.model.build import build_model
from clrctl.optim.optimizers import build_optimizer
from clrctl.engine.step import train_step


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "synthetic"])
    parser.add_argument("--samples", type=int, default=20000, help="synthetic only")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    device = torch.device("cpu")
    cfg = DatasetConfig(name=args.dataset, batch_size=args.batch_size, num_samples=args.samples)
    bundle = build_data(cfg, seed=0, device=device)
    xs, ys = zip(*bundle.train.batches(0))
    x, y = torch.cat(xs), torch.cat(ys)  # the same normalised tensors for both paths
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True, num_workers=0)

    model = build_model(ModelConfig(name="mlp", hidden=[64, 64]), bundle.input_shape, bundle.num_classes)
    optimizer = build_optimizer(OptimizerConfig(momentum=0.9), model.parameters(), 0.01)
    loss_fn = torch.nn.CrossEntropyLoss()

    def tensor_epoch(train: bool):
        for bx, by in bundle.train.batches(1):
            if train:
                train_step(model, optimizer, bx, by, loss_fn)

    def loader_epoch(train: bool):
        for bx, by in loader:
            if train:
                train_step(model, optimizer, bx, by, loss_fn)

    print(f"{args.dataset}: {bundle.train.num_samples} train samples, batch {args.batch_size}, "
          f"{len(bundle.train)} steps/epoch, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'one epoch':<28}{'TensorSource':>14}{'DataLoader':>14}{'ratio':>8}")
    for label, train in (("batches only", False), ("batches + MLP train step", True)):
        t_tensor = best_of(args.repeats, lambda: tensor_epoch(train))
        t_loader = best_of(args.repeats, lambda: loader_epoch(train))
        print(f"{label:<28}{t_tensor * 1e3:>11.1f} ms{t_loader * 1e3:>11.1f} ms{t_loader / t_tensor:>7.1f}x")


if __name__ == "__main__":
    main()
