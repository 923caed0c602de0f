"""Does a search (TPE + ASHA) reach a grid's best with at most half its optimizer steps? (issue 22)

On the space of the bundled ``configs/digits-stepsize-sweep.yaml`` (``policy.name`` ×
``policy.stepsize``: 2 × 4 points, 16 epochs = 688 steps each), this runs

- the grid as bundled: ``clrctl sweep configs/digits-stepsize-sweep.yaml`` (its 8 points and
  2 fixed-LR baselines, 3 seeds each), into ``OUT/grid``;
- ``--studies`` TPE studies with ASHA pruning over the grid's 8 points (the fixed baselines
  are not a point of a name × stepsize space), ``--trials`` trials each, seed 0 (the config's),
  sampler seeds 0, 1, …, into ``OUT/search-<k>``;

then prints one table: the grid's best point (median of ``final_val_acc`` over its seeds, and
the seeds' min–max), and for each study its best trial, whether that is within the grid's
best point's seed spread (≥ its lowest seed), and the optimizer steps each used (the sum of
``summary.json["steps"]`` over its runs: a pruned trial counts the steps it ran).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/search_vs_grid.py --out /tmp/svg
    ... --trials 16; ... --prune-after 172     (more trials; ASHA's first rung at step 172)

Everything runs on the CPU (``device=cpu``), one torch thread per process
(``OMP_NUM_THREADS=1`` unless set). Rerunning on the same OUT continues (the grid skips its
finished runs, each study is complete at ``--trials``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's clrctl, in-process as in the subprocesses
CONFIG = REPO / "configs" / "digits-stepsize-sweep.yaml"
SPACE = ["policy.name=choice(triangular, triangular2)",
         "policy.stepsize=choice(1 epochs, 2 epochs, 4 epochs, 8 epochs)"]


def summaries(paths) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(paths)]


def run_grid(out: Path, jobs: int) -> dict:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "clrctl", "sweep", str(CONFIG), "device=cpu", "--run-dir", str(out),
                    "--jobs", str(jobs), "-q"], check=True, cwd=REPO)
    elapsed = time.monotonic() - t0
    points = {}
    for point in sorted((out / "points").iterdir()):
        values = [s["final_val_acc"] for s in summaries(point.glob("seed-*/summary.json"))]
        points[point.name] = values
    best = max(points, key=lambda name: statistics.median(points[name]))
    steps = sum(s["steps"] for s in summaries((out / "points").glob("*/seed-*/summary.json")))
    grid_only = sum(s["steps"] for p in (out / "points").iterdir() if "fixed" not in p.name
                    for s in summaries(p.glob("seed-*/summary.json")))
    seed0 = {p.name: summaries([p / "seed-0" / "summary.json"])[0] for p in (out / "points").iterdir()
             if "fixed" not in p.name}
    one = max(seed0, key=lambda name: seed0[name]["final_val_acc"])
    return {"seed0": {"best": one, "value": seed0[one]["final_val_acc"],
                      "steps": sum(s["steps"] for s in seed0.values())},
            "best": best, "values": points[best], "median": statistics.median(points[best]), "steps": steps,
            "steps_8_points": grid_only, "runs": sum(len(v) for v in points.values()), "elapsed": elapsed,
            "points": {k: statistics.median(v) for k, v in points.items()}}


def run_search(out: Path, trials: int, sampler_seed: int, prune_after=None) -> dict:
    """One study, in this process through the library (``clrctl sweep --search tpe --prune asha
    --sampler-seed K`` does the same)."""
    from clrctl.sweep import search as s

    spec = s.build_search(CONFIG, ["device=cpu"], SPACE, search="tpe", trials=trials, metric="val_acc",
                          prune="asha", storage=None, study=None, path=out,
                          prune_after=prune_after, sampler_seed=sampler_seed)
    s.prepare(spec)
    t0 = time.monotonic()
    s.work(spec, argv=["benchmarks/search_vs_grid.py"])
    elapsed = time.monotonic() - t0
    index = s.write_index(spec, ["benchmarks/search_vs_grid.py"])
    runs = summaries((out / "trials").glob("*/summary.json"))
    return {"best": index["best"], "steps": sum(r["steps"] for r in runs), "counts": index["counts"],
            "elapsed": elapsed, "distinct": len({tuple(sorted(p["overrides"].items())) for p in index["points"]})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/search-vs-grid"))
    parser.add_argument("--trials", type=int, default=8, help="trials per study (default 8)")
    parser.add_argument("--studies", type=int, default=3, help="TPE studies, sampler seeds 0.. (default 3)")
    parser.add_argument("--jobs", type=int, default=1, help="the grid's --jobs (default 1)")
    parser.add_argument("--prune-after", type=int, default=None,
                        help="the studies' --prune-after STEP (ASHA's first rung; default: Optuna's)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    grid = run_grid(args.out / "grid", args.jobs)
    low, high = min(grid["values"]), max(grid["values"])
    print(f"\ngrid: {grid['runs']} runs, {grid['steps']} optimizer steps ({grid['steps_8_points']} in the 8 "
          f"points of the searched space), {grid['elapsed']:.0f} s", file=sys.stderr)
    print(f"grid's best point: {grid['best']}: final_val_acc median {grid['median']:.4f} "
          f"(seeds {', '.join(f'{v:.4f}' for v in grid['values'])})\n")
    print("| run | best final_val_acc (seed 0) | within the grid best's seed spread | that point's grid median "
          "(3 seeds) | optimizer steps | share of the grid's steps | trials (distinct points) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| grid (bundled, 3 seeds) | {grid['median']:.4f} (median; {low:.4f}–{high:.4f}) | — | {grid['median']:.4f} | "
          f"{grid['steps']} | 1.00 | {grid['runs']} runs |")
    one = grid["seed0"]
    print(f"| grid, seed 0 only (the 8 points) | {one['value']:.4f} ({one['best']}) | "
          f"{'yes' if one['value'] >= low else 'no'} | {grid['points'][one['best']]:.4f} | {one['steps']} | "
          f"{one['steps'] / grid['steps']:.2f} | 8 runs |")
    for k in range(args.studies):
        name = f"search-{k}" + ("" if args.trials == 8 else f"-t{args.trials}") + (
            f"-after{args.prune_after}" if args.prune_after else "")
        result = run_search(args.out / name, args.trials, k, args.prune_after)
        best = result["best"] or {}
        value = best.get("value")
        within = "yes" if value is not None and value >= low else "no"
        counts = ", ".join(f"{n} {state}" for state, n in result["counts"].items())
        where = ", ".join(f"{key.split('.')[-1]}={v}" for key, v in (best.get("overrides") or {}).items())
        shown = f"{value:.4f} ({where})" if value is not None else "none completed"
        point = "policy-" + "_".join(f"{key.split('.')[-1]}-{str(v).replace(' ', '')}"
                                     for key, v in (best.get("overrides") or {}).items())
        median = grid["points"].get(point.replace("policy-name-", "policy-"))
        after = f", first rung at step {args.prune_after}" if args.prune_after else ""
        print(f"| TPE+ASHA{after}, {args.trials} trials, sampler seed {k} | {shown} | {within} | "
              f"{'—' if median is None else f'{median:.4f}'} | {result['steps']} | "
              f"{result['steps'] / grid['steps']:.2f} | {counts} ({result['distinct']}) |", flush=True)
        print(f"(study {k}: {result['elapsed']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
