"""What a sweep costs beyond its training (issue 24): the same 12 digits points, 1 epoch each.

Run:  nice -n 5 .venv/bin/python benchmarks/sweep_overhead.py [--repeats 3] [--no-cold] [--threads K]

Whole-process wall times, best of ``--repeats`` (the ways alternate, so machine noise hits
all alike), each a fresh process started from this script:

- (a) ``clrctl sweep --jobs 1``: one warm worker runs the 12 points in turn;
- (b) a plain Python loop, ``clrctl.train(config, **overrides)`` for each point, in one
  process: the floor (one start-up, then only training);
- (c) ``clrctl sweep --jobs 2``: two warm workers, a core each;
- (d) (unless ``--no-cold``) 12 ``clrctl train`` processes one after another: what a sweep
  cost when every point was a new process.

Goals: (a) <= 1.2 x (b); (c) >= 1.6 x faster than (a). The points: policy.name in
{triangular, triangular2, exp_range} x optimizer.momentum in {0.8, 0.85, 0.9, 0.95} on
configs/digits-triangular2.yaml with train.epochs=1, device=cpu. OMP_NUM_THREADS is left
unset: (a), (b) and (d) use every core, (c)'s workers get one each (the sweep's share);
``--threads K`` sets OMP_NUM_THREADS=K for every way instead (a sweep keeps the user's
setting), which on a busy machine spares the multi-threaded ways the cost of waiting for
descheduled threads.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/digits-triangular2.yaml"
POLICIES = ("triangular", "triangular2", "exp_range")
MOMENTA = (0.8, 0.85, 0.9, 0.95)
FIXED = ["train.epochs=1", "device=cpu"]
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "OMP_NUM_THREADS",
                                                        "MKL_NUM_THREADS")}
ENV["MPLBACKEND"] = "Agg"
ENV["PYTHONPATH"] = f"{REPO}{os.pathsep}{ENV.get('PYTHONPATH', '')}"  # this checkout's clrctl

LOOP = """
import sys
import clrctl
for i, (policy, momentum) in enumerate({points!r}):
    clrctl.train({config!r}, run_dir=f"{{sys.argv[1]}}/p{{i}}", **{{"policy.name": policy,
                 "optimizer.momentum": momentum, "train.epochs": 1, "device": "cpu"}})
"""


def points() -> list[tuple[str, float]]:
    return list(itertools.product(POLICIES, MOMENTA))


def sweep_cmd(out: Path, jobs: int) -> list[list[str]]:
    return [[sys.executable, "-m", "clrctl", "sweep", CONFIG, *FIXED, "-g", f"policy.name={','.join(POLICIES)}",
             "-g", f"optimizer.momentum={','.join(map(str, MOMENTA))}", "--jobs", str(jobs), "--run-dir", str(out),
             "-q"]]


def loop_cmd(out: Path) -> list[list[str]]:
    return [[sys.executable, "-c", LOOP.format(points=points(), config=CONFIG), str(out)]]


def cold_cmds(out: Path) -> list[list[str]]:
    return [[sys.executable, "-m", "clrctl", "train", CONFIG, *FIXED, f"policy.name={p}", f"optimizer.momentum={m}",
             "--run-dir", str(out / f"p{i}"), "-q"] for i, (p, m) in enumerate(points())]


def timed(cmds: list[list[str]]) -> float:
    start = time.perf_counter()
    for cmd in cmds:
        done = subprocess.run(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cold", action="store_true", help="Skip (d), 12 clrctl train processes.")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every way.")
    args = parser.parse_args()
    if args.threads is not None:
        ENV["OMP_NUM_THREADS"] = ENV["MKL_NUM_THREADS"] = str(args.threads)
    ways = {
        "(a) clrctl sweep --jobs 1": lambda out: sweep_cmd(out, 1),
        "(b) one process, clrctl.train() per point": loop_cmd,
        "(c) clrctl sweep --jobs 2": lambda out: sweep_cmd(out, 2),
    }
    if not args.no_cold:
        ways["(d) a clrctl train process per point"] = cold_cmds
    times: dict[str, list[float]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory() as tmp:
        timed(cold_cmds(Path(tmp) / "warmup")[:1])  # untimed: bytecode compiled, files in the page cache
        for rep in range(args.repeats):
            for name, make in ways.items():
                out = Path(tmp) / f"{rep}-{name[1]}"
                times[name].append(timed(make(out)))
                print(f"  {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    best = {name: min(t) for name, t in times.items()}
    b = best["(b) one process, clrctl.train() per point"]
    a = best["(a) clrctl sweep --jobs 1"]
    c = best["(c) clrctl sweep --jobs 2"]
    threads = "every core" if args.threads is None else f"OMP_NUM_THREADS={args.threads}"
    print(f"12 digits points, 1 epoch each; whole-process wall time, best of {args.repeats}, "
          f"{os.cpu_count()} cores, {threads}\n")
    print("| way | wall (s) | / (b) |")
    print("| --- | ---: | ---: |")
    for name, value in best.items():
        print(f"| {name} | {value:.2f} | {value / b:.2f} |")
    print(f"\n(a) / (b) = {a / b:.2f} (goal <= 1.2); (a) / (c) = {a / c:.2f} (goal >= 1.6)")
    if "(d) a clrctl train process per point" in best:
        print(f"(d) / (a) = {best['(d) a clrctl train process per point'] / a:.2f}: the warm sweep's gain over a "
              "process per point")


if __name__ == "__main__":
    main()
