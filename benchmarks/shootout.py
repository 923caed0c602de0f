"""The shoot-out (issue 20 part 3): CLR against today's schedules on real Fashion-MNIST, at equal
budget (same model, epochs and batch), each optimizer at the LR its own range test suggests.

    python benchmarks/shootout.py --out /tmp/shootout --epochs 4 --seeds 5 --jobs 2

1. One LR range test per optimizer (SGD momentum, AdamW, Schedule-Free SGD/AdamW, Muon), two
   epochs each, on the bundled ``configs/fashion-lenet-one_cycle.yaml`` (its model, data, batch,
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
STEPS_PER_EPOCH = 469  # 60,000 images, batch 128
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
    """name -> (optimizer, a function of the suggestion (base, top) giving the policy overrides).

    Every schedule that starts at max_lr (cosine, wsd, linear) warms up over the first 5% of the
    run from 0: started cold at the suggested max_lr, SGD momentum does not leave chance on LeNet
    (the 1-seed study's finding)."""
    half = f"{epochs / 4:g} epochs"  # a half cycle: two cycles in the run (triangular2, sgdr)
    warmup = [f"policy.warmup={epochs * 0.05:g} epochs", "policy.warmup_start=0.0"]

    def bounds(base, top):
        return [f"policy.bounds=[{base:.4g}, {top:.4g}]"]

    def to_zero(name, *extra):
        return lambda base, top: ([f"policy.name={name}", f"policy.bounds=[0, {top:.4g}]",
                                   "policy.momentum=null", *extra] + warmup)

    def single(base, top):  # Schedule-Free: the LR where its averaged weights' test stops improving
        return SINGLE[:1] + [f"policy.lr={top:.4g}"] + SINGLE[2:]

    def fixed(scale):  # SGD: max_lr diverges with momentum 0.9; base_lr (x scale) is the LR that trains
        return lambda base, top: SINGLE[:1] + [f"policy.lr={base * scale:.4g}"] + SINGLE[2:]

    def step(base, top):
        return ["policy.name=step", f"policy.lr={base:.4g}", "policy.bounds=null", "policy.momentum=null",
                f"policy.milestones=[{epochs / 2:g} epochs, {epochs * 3 / 4:g} epochs]"]

    wsd = ("policy.decay=0.2", "policy.decay_shape=sqrt")
    return {
        # The fixed LRs around the range test's base_lr: the best of them is the paper's baseline.
        "sgd-fixed": ("sgd", fixed(1.0)),  # first: the compare report's baseline
        "sgd-fixed-x0.5": ("sgd", fixed(0.5)),
        "sgd-fixed-x2": ("sgd", fixed(2.0)),
        "sgd-triangular2": ("sgd", lambda b, t: ["policy.name=triangular2", f"policy.stepsize={half}",
                                                   "policy.momentum=null"] + bounds(b, t)),
        "sgd-one_cycle": ("sgd", bounds),  # the bundled config: one_cycle, momentum 0.85-0.95
        "sgd-step": ("sgd", step),
        "sgd-cosine-warmup": ("sgd", to_zero("cosine")),
        "adamw-cosine-warmup": ("adamw", to_zero("cosine")),
        "sgd-wsd": ("sgd", to_zero("wsd", *wsd)),
        "adamw-wsd": ("adamw", to_zero("wsd", *wsd)),
        "sgd-linear": ("sgd", to_zero("linear")),
        "schedulefree_sgd": ("schedulefree_sgd", single),
        "schedulefree_adamw": ("schedulefree_adamw", single),
        "muon-one_cycle": ("muon", bounds),
    }


# Smith 2018's claim (1cycle at N epochs against step decay at several times N): one_cycle over
# a quarter of the study's epochs, beside the study's own step decay.
SHORT_ONE_CYCLE = "sgd-one_cycle-short"


def clrctl(args: list[str], log: Path) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with open(log, "w") as out:
        return subprocess.call([sys.executable, "-m", "clrctl", *args], stdout=out, stderr=subprocess.STDOUT,
                               env=env, cwd=ROOT)


def median_final(group: Path) -> float:
    finals = sorted(json.loads(p.read_text())["final_val_acc"] for p in group.glob("seed-*/summary.json"))
    return finals[len(finals) // 2]


def paper_claims(out: Path, ran: list[str]) -> dict:
    """(a) Smith 2017: triangular2 against the best fixed LR, in steps to that LR's final accuracy;
    (b) Smith 2018: 1cycle over a quarter of the epochs against step decay over all of them."""
    groups = out / "groups"
    claims = {}
    fixed = [n for n in ran if n.startswith("sgd-fixed")]
    if fixed and "sgd-triangular2" in ran:
        best = max(fixed, key=lambda n: median_final(groups / n))
        target = median_final(groups / best)
        claims["a"] = {"best_fixed": best, "target_val_acc": target}
        clrctl(["compare", str(groups / best), str(groups / "sgd-triangular2"), "--target", f"val_acc={target}",
                "-f", "markdown", "-o", str(out / "claim-a.md")], out / "logs" / "claim-a.log")
    if SHORT_ONE_CYCLE in ran and "sgd-step" in ran:
        claims["b"] = {"step": median_final(groups / "sgd-step"), "one_cycle_short": median_final(groups / SHORT_ONE_CYCLE)}
        clrctl(["compare", str(groups / "sgd-step"), str(groups / SHORT_ONE_CYCLE), "-f", "markdown",
                "-o", str(out / "claim-b.md")], out / "logs" / "claim-b.log")
    return claims


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--evals-per-epoch", type=int, default=4, help="evaluations per epoch (steps to target)")
    parser.add_argument("--target", default="val_acc=0.90")
    parser.add_argument("--range-epochs", type=int, default=2,
                        help="each range test's length (one epoch overshoots on this data: see docs/results.md)")
    parser.add_argument("--only", nargs="*", help="schedule names to run (default: all)")
    args = parser.parse_args()
    out = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan = schedules(args.epochs)
    short = max(1, args.epochs // 4)
    plan[SHORT_ONE_CYCLE] = plan["sgd-one_cycle"]
    epochs_of = {name: (short if name == SHORT_ONE_CYCLE else args.epochs) for name in plan}
    names = args.only or list(plan)
    wanted = sorted({plan[n][0] for n in names})

    def range_test(opt: str):
        run = out / "range-tests" / opt
        if not (run / "summary.json").exists():
            if run.exists():  # an unfinished test (the script was stopped): again from the start
                shutil.rmtree(run)
            overrides, rt = OPTIMIZERS[opt]
            single = SINGLE if opt.startswith("schedulefree") else []
            clrctl(["range-test", str(CONFIG), *overrides, *single, *rt, f"range_test.steps={args.range_epochs} epochs",
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
            every = STEPS_PER_EPOCH // args.evals_per_epoch
            clrctl(["train", str(CONFIG), *overrides, f"train.epochs={epochs_of[name]}", f"train.eval_every={every}",
                    f"name={name}",
                    "--seeds", str(args.seeds), "--run-dir", str(group), "-q"], out / "logs" / f"{name}.log")
        return name, policy(base, top)

    with ThreadPoolExecutor(args.jobs) as pool:
        used = dict(pool.map(train, names))
    groups = [str(out / "groups" / n) for n in names if used.get(n) is not None and n != SHORT_ONE_CYCLE]
    for fmt, path in (("markdown", "compare.md"), ("json", "compare.json")):
        clrctl(["compare", *groups, "--target", args.target, "-f", fmt, "-o", str(out / path)],
               out / "logs" / f"compare-{fmt}.log")
    clrctl(["compare", *groups, "--target", args.target, "--plot", str(out / "compare.png"), "-o", os.devnull],
           out / "logs" / "compare-plot.log")
    claims = paper_claims(out, [n for n in names if used.get(n) is not None])
    wall = time.perf_counter() - t0
    (out / "shootout.json").write_text(json.dumps({
        "epochs": args.epochs, "seeds": args.seeds, "jobs": args.jobs, "target": args.target,
        "range_tests": {k: {"base_lr": v[0], "max_lr": v[1]} for k, v in found.items()},
        "policies": used, "claims": claims, "range_test_s": round(t_rt, 1), "wall_s": round(wall, 1)}, indent=2) + "\n")
    print(f"{len(groups)} groups, {wall:.0f} s (range tests {t_rt:.0f} s): {out / 'compare.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
