"""The shoot-out (issue 20 part 3): CLR against today's schedules on real Fashion-MNIST, at equal
budget (same model, epochs and batch), each optimizer at the LR its own range test suggests.

    python benchmarks/shootout.py --out /tmp/shootout --epochs 2 --seeds 3 --jobs 2

1. One LR range test per optimizer (SGD momentum, AdamW, Schedule-Free SGD/AdamW, Muon), one
   epoch each, on the bundled ``configs/fashion-lenet-one_cycle.yaml`` (its model, data, batch,
   weight decay). The rule from a test to a schedule's LR: schedules between bounds take the
   suggestion's ``[base_lr, max_lr]``; those that decay to zero (cosine, wsd, linear) take
   ``[0, max_lr]``; SGD's single LR (fixed, step's start) is the suggestion's ``base_lr``
   (at ``max_lr`` it does not train: ``sgd-fixed-max``); Schedule-Free's is its own test's
   ``max_lr`` (that test measures the averaged weights).
2. Every schedule trained with ``--seeds N``: a seed group each under OUT/groups/.
3. ``clrctl compare`` over the groups (baseline: SGD fixed) with ``--target``: OUT/compare.md
   (markdown) and OUT/compare.json, and OUT/shootout.json (the LRs used, the wall time).

Runs as subprocesses of ``python -m clrctl``, ``--jobs`` at a time, each with one thread
(OMP_NUM_THREADS=1: on a shared small CPU torch's default threads oversubscribe it, 7x slower).
Not a test: the default suite never runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "fashion-lenet-one_cycle.yaml"

# optimizer -> (config overrides, range-test overrides). The bundled config is SGD momentum 0.9
# with a one_cycle policy; a range test needs a policy its optimizer accepts (fixed for
# Schedule-Free, no cycled momentum for Muon).
BUNDLED_MAX = 0.099  # configs/fashion-lenet-one_cycle.yaml's max_lr (its own 2-epoch range test)
SINGLE = ["policy.name=fixed", "policy.lr=0.01", "policy.bounds=null", "policy.momentum=null"]
OPTIMIZERS = {
    "sgd": ([], ["range_test.mode=linear", "range_test.start_lr=0.001", "range_test.end_lr=1.0"]),
    "adamw": (["optimizer.name=adamw", "optimizer.momentum=0.0"],
              ["range_test.mode=exp", "range_test.start_lr=1e-5", "range_test.end_lr=1.0"]),
    "schedulefree_sgd": (["optimizer.name=schedulefree_sgd"],
                         ["range_test.mode=exp", "range_test.start_lr=1e-3", "range_test.end_lr=30.0"]),
    "schedulefree_adamw": (["optimizer.name=schedulefree_adamw", "optimizer.momentum=0.0"],
                           ["range_test.mode=exp", "range_test.start_lr=1e-5", "range_test.end_lr=1.0"]),
    "muon": (["optimizer.name=muon", "optimizer.momentum=0.95", "policy.momentum=null"],
             ["range_test.mode=exp", "range_test.start_lr=1e-5", "range_test.end_lr=1.0"]),
}


def schedules(epochs: int) -> dict[str, tuple[str, object]]:
    """name -> (optimizer, a function of the suggestion (base, top) giving the policy overrides)."""
    half = f"{epochs / 4:g} epochs"  # a half cycle: two cycles in the run (triangular2, sgdr)

    def bounds(base, top):
        return [f"policy.bounds=[{base:.4g}, {top:.4g}]"]

    def to_zero(name):
        return lambda base, top: [f"policy.name={name}", f"policy.bounds=[0, {top:.4g}]", "policy.momentum=null"]

    def single(base, top):  # Schedule-Free: the LR where its averaged weights' test stops improving
        return SINGLE[:1] + [f"policy.lr={top:.4g}"] + SINGLE[2:]

    def fixed(base, top):  # SGD: max_lr diverges with momentum 0.9 (sgd-fixed-max); base_lr is the LR that trains
        return SINGLE[:1] + [f"policy.lr={base:.4g}"] + SINGLE[2:]

    return {
        "sgd-fixed": ("sgd", fixed),
        "sgd-fixed-max": ("sgd", single),
        "sgd-triangular2": ("sgd", lambda b, t: ["policy.name=triangular2", f"policy.stepsize={half}",
                                                   "policy.momentum=null"] + bounds(b, t)),
        "sgd-one_cycle": ("sgd", bounds),  # the bundled config: one_cycle, momentum 0.85-0.95
        "sgd-step": ("sgd", lambda b, t: ["policy.name=step", f"policy.lr={b:.4g}", "policy.bounds=null",
                                          "policy.momentum=null",
                                          f"policy.milestones=[{epochs / 2:g} epochs, {epochs * 3 / 4:g} epochs]"]),
        "sgd-sgdr": ("sgd", lambda b, t: ["policy.name=sgdr", f"policy.stepsize={half}", "policy.momentum=null"]
                     + bounds(b, t)),
        "sgd-cosine": ("sgd", to_zero("cosine")),
        "sgd-wsd": ("sgd", lambda b, t: to_zero("wsd")(b, t) + ["policy.decay=0.2", "policy.decay_shape=sqrt"]),
        "sgd-linear": ("sgd", to_zero("linear")),
        # Starting at the suggested max_lr with no warmup, SGD momentum does not train LeNet here;
        # these start at the bundled config's max_lr instead (0.099: its 2-epoch range test).
        "sgd-cosine-0.099": ("sgd", lambda b, t: to_zero("cosine")(b, BUNDLED_MAX)),
        "sgd-wsd-0.099": ("sgd", lambda b, t: to_zero("wsd")(b, BUNDLED_MAX) + ["policy.decay=0.2",
                                                                                 "policy.decay_shape=sqrt"]),
        "sgd-linear-0.099": ("sgd", lambda b, t: to_zero("linear")(b, BUNDLED_MAX)),
        "adamw-cosine": ("adamw", to_zero("cosine")),
        "adamw-wsd": ("adamw", lambda b, t: to_zero("wsd")(b, t) + ["policy.decay=0.2", "policy.decay_shape=sqrt"]),
        "schedulefree_sgd": ("schedulefree_sgd", single),
        "schedulefree_adamw": ("schedulefree_adamw", single),
        "muon-one_cycle": ("muon", bounds),
    }


def clrctl(args: list[str], log: Path) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with open(log, "w") as out:
        return subprocess.call([sys.executable, "-m", "clrctl", *args], stdout=out, stderr=subprocess.STDOUT,
                               env=env, cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--target", default="val_acc=0.87")
    parser.add_argument("--only", nargs="*", help="schedule names to run (default: all)")
    args = parser.parse_args()
    out = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan = schedules(args.epochs)
    names = args.only or list(plan)
    wanted = sorted({plan[n][0] for n in names})

    def range_test(opt: str):
        run = out / "range-tests" / opt
        if not (run / "summary.json").exists():
            if run.exists():  # an unfinished test (the script was stopped): again from the start
                shutil.rmtree(run)
            overrides, rt = OPTIMIZERS[opt]
            single = SINGLE if opt.startswith("schedulefree") else []
            clrctl(["range-test", str(CONFIG), *overrides, *single, *rt, "range_test.steps=1 epochs",
                    f"name=shootout-rt-{opt}", "--run-dir", str(run), "-q"], out / "logs" / f"rt-{opt}.log")
        suggestion = json.loads((run / "summary.json").read_text())["suggestion"]
        return opt, (suggestion["base_lr"], suggestion["max_lr"])

    with ThreadPoolExecutor(args.jobs) as pool:
        found = dict(pool.map(range_test, wanted))
    t_rt = time.perf_counter() - t0

    def train(name: str):
        opt, policy = plan[name]
        base, top = found[opt]
        if base is None:
            return name, None
        group = out / "groups" / name
        if len(list(group.glob("seed-*/summary.json"))) < args.seeds:
            if group.exists():
                shutil.rmtree(group)
            overrides = OPTIMIZERS[opt][0] + policy(base, top)
            clrctl(["train", str(CONFIG), *overrides, f"train.epochs={args.epochs}", f"name={name}",
                    "--seeds", str(args.seeds), "--run-dir", str(group), "-q"], out / "logs" / f"{name}.log")
        return name, policy(base, top)

    with ThreadPoolExecutor(args.jobs) as pool:
        used = dict(pool.map(train, names))
    groups = [str(out / "groups" / n) for n in names if used.get(n) is not None]
    for fmt, path in (("markdown", "compare.md"), ("json", "compare.json")):
        clrctl(["compare", *groups, "--target", args.target, "-f", fmt, "-o", str(out / path)],
               out / "logs" / f"compare-{fmt}.log")
    clrctl(["compare", *groups, "--target", args.target, "--plot", str(out / "compare.png"), "-o", os.devnull],
           out / "logs" / "compare-plot.log")
    wall = time.perf_counter() - t0
    (out / "shootout.json").write_text(json.dumps({
        "epochs": args.epochs, "seeds": args.seeds, "jobs": args.jobs, "target": args.target,
        "range_tests": {k: {"base_lr": v[0], "max_lr": v[1]} for k, v in found.items()},
        "policies": used, "range_test_s": round(t_rt, 1), "wall_s": round(wall, 1)}, indent=2) + "\n")
    print(f"{len(groups)} groups, {wall:.0f} s (range tests {t_rt:.0f} s): {out / 'compare.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
