"""clrctl's range test vs torch-lr-finder's ``LRFinder.range_test``: same model, data, steps.

    .venv/bin/pip install torch-lr-finder      # only for this script; not a clrctl dependency
    .venv/bin/python benchmarks/range_test_vs_lrfinder.py [--repeats 5] [--config configs/digits-range-test.yaml]

Both tools start from the same freshly initialised model (clrctl's seed-0 MLP on digits),
see the same training split with batch 32, and run the same number of steps over the same
LR range, in two settings: the bundled linear sweep (Smith) and torch-lr-finder's default
style exp sweep. Each keeps its own smoothing and stop rule (clrctl: debiased EMA 0.98, stop
at 4x; torch-lr-finder: EMA 0.05, stop at 5x). clrctl also measures val accuracy on a fixed
slice every ``eval_every`` steps — part of its timing. Each tool is warmed up once, then
timed ``--repeats`` times (interleaved); min and median are shown.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    from torch_lr_finder import LRFinder
    from torch_lr_finder.lr_finder import TrainDataLoaderIter
except ImportError:
    sys.exit("torch-lr-finder is not installed: run `.venv/bin/pip install torch-lr-finder` "
             "(it is needed by this benchmark only, not by clrctl)")

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from clrctl.rangetest import sweep as rt  # noqa: E402
from clrctl.config.schema import load_config  # noqa: E402
from clrctl.optim.optimizers import build_optimizer  # noqa: E402

SETTINGS = {  # name -> overrides of range_test
    "linear 1e-4..0.3, 8 epochs": ["range_test.mode=linear", "range_test.end_lr=0.3"],
    "exp 1e-4..10, 8 epochs": ["range_test.mode=exp", "range_test.end_lr=10"],
}


def run_clrctl(setup: rt.SweepSetup) -> tuple[float, dict]:
    t0 = time.perf_counter()
    result = rt.sweep(setup)
    eval_size = min(setup.config.range_test.eval_size, setup.data.val.num_samples)
    suggestion = rt.suggest_from_rows(result.rows, setup.steps, eval_size)
    return time.perf_counter() - t0, {"steps": result.steps, "stop": result.stop_reason, **suggestion}


class _SameBatches(TrainDataLoaderIter):
    """clrctl's own device batches (epoch after epoch), fed to torch-lr-finder."""

    def __init__(self, source):
        self.source, self.epoch = source, 0
        super().__init__(self._stream())

    def _stream(self):
        while True:
            yield from self.source.batches(self.epoch)
            self.epoch += 1


def run_lrfinder(setup: rt.SweepSetup, loader_kind: str) -> tuple[float, dict]:
    cfg = setup.config
    model = copy.deepcopy(setup.model)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.range_test.start_lr)
    train = setup.data.train  # a TensorSource: the normalised tensors on the device
    if loader_kind == "same batches":
        loader = _SameBatches(train)
    else:  # the usual way to call it: a DataLoader over the same tensors
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train.x, train.y),
                                             batch_size=cfg.dataset.batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    finder = LRFinder(model, optimizer, nn.CrossEntropyLoss(), device=setup.device)
    with quiet():
        finder.range_test(loader, end_lr=cfg.range_test.end_lr, num_iter=setup.steps,
                          step_mode=cfg.range_test.mode)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    try:  # its suggestion lives in plot(): argmin np.gradient(smoothed loss) over [10:-5]
        with quiet():
            _, steepest = finder.plot(ax=ax, suggest_lr=True, log_lr=cfg.range_test.mode == "exp")
    except Exception:  # too few points
        steepest = None
    plt.close(fig)
    finder.reset()
    elapsed = time.perf_counter() - t0
    return elapsed, {"steps": len(finder.history["lr"]), "steepest": steepest}


@contextlib.contextmanager
def quiet():
    """torch-lr-finder prints its progress (tqdm) and suggestion; keep the table readable."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def fmt(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits-range-test.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu\n")
    for name, overrides in SETTINGS.items():
        cfg = load_config(args.config, overrides + ["device=cpu"])
        setup = rt.prepare(cfg)
        kinds = ("same batches", "DataLoader")
        times: dict[str, list[float]] = {"clrctl": [], **{k: [] for k in kinds}}
        theirs = {}
        run_clrctl(setup)  # warm-up (the first sweep in a process pays ~1 s of lazy torch init)
        for kind in kinds:
            run_lrfinder(setup, kind)
        for _ in range(args.repeats):  # interleaved so all see the same machine load
            t, ours = run_clrctl(setup)
            times["clrctl"].append(t)
            for kind in kinds:
                t, theirs[kind] = run_lrfinder(setup, kind)
                times[kind].append(t)
        c = ours["candidates"]
        print(f"== {name}: {setup.steps} steps planned, batch {cfg.dataset.batch_size}, {cfg.optimizer.name} "
              f"momentum {cfg.optimizer.momentum}")
        print(f"{'':24}{'clrctl':>22}{'lr-finder, same batches':>26}{'lr-finder, DataLoader':>24}")
        a, b = theirs["same batches"], theirs["DataLoader"]
        rows = [
            ("wall time, min (s)", *(f"{min(times[k]):.3f}" for k in times)),
            ("wall time, median (s)", *(f"{statistics.median(times[k]):.3f}" for k in times)),
            ("ms per step (min)", *(f"{1000 * min(times[k]) / n:.2f}" for k, n in
                                    zip(times, (ours["steps"], a["steps"], b["steps"])))),
            ("steps run", f"{ours['steps']} ({ours['stop'] or 'end'})", str(a["steps"]), str(b["steps"])),
            ("base_lr / max_lr", f"{fmt(ours['base_lr'])} / {fmt(ours['max_lr'])}", "-", "-"),
            ("steepest", fmt(c["steepest"]["lr"]) + " (zero-phase)", fmt(a["steepest"]) + " (EMA)",
             fmt(b["steepest"]) + " (EMA)"),
            ("valley (fastai)", fmt(c["valley"]["lr"]), "-", "-"),
            ("min loss / 10", fmt(c["min_loss/10"]["lr"]), "-", "-"),
        ]
        for label, x, y, z in rows:
            print(f"{label:24}{x:>22}{y:>26}{z:>24}")
        print()


if __name__ == "__main__":
    main()
