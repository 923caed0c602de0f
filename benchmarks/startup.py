"""Whole-process start-up of the CLI (issue 9, part 3), each command a fresh process.

Run:  .venv/bin/python benchmarks/startup.py [--repeats 5]

Measures, best of ``--repeats`` (the commands alternate, so machine noise hits all alike):

- ``clrctl --help`` and ``clrctl compare RUN RUN`` (on a run made once up front);
- ``python -c "import torch"``: the floor any training command pays;
- ``python -c "import torch; torch.optim.SGD(...)"``: the floor of any training script, whose
  first optimizer imports torch._dynamo;
- ``clrctl train configs/digits-triangular2.yaml``: wall time, its own ``elapsed_s`` (the
  training loop), and the rest: ``overhead = wall - elapsed_s - import torch``, which the
  issue's goal puts at about 1 s at most (data, model, optimizer, run directory, plots), and
  the same beyond the floor with the optimizer.
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
CLRCTL = [sys.executable, "-m", "clrctl"]
OPTIMIZER = "import torch; torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)"


# As a user's shell runs them: Python may cache compiled bytecode (a sandbox that sets
# PYTHONDONTWRITEBYTECODE would make every start compile clrctl's modules afresh).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", default="configs/digits-triangular2.yaml")
    args = parser.parse_args()
    best: dict[str, float] = {}
    train_overhead: list[tuple[float, float]] = []  # (wall, elapsed_s) of each train
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "ref"
        subprocess.run([*CLRCTL, "train", args.config, "--run-dir", str(ref), "-q"], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, env=ENV)  # (also the untimed warm-up: bytecode cached)
        commands = {
            "clrctl --help": [*CLRCTL, "--help"],
            "clrctl compare RUN RUN": [*CLRCTL, "compare", str(ref), str(ref)],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            # What every training script pays: the first optimizer imports torch._dynamo
            # (torch._disable_dynamo wraps Optimizer.add_param_group), ~0.7 s.
            "import torch + build an optimizer": [sys.executable, "-c", OPTIMIZER],
        }
        for i in range(args.repeats):
            for name, cmd in commands.items():
                best[name] = min(best.get(name, float("inf")), timed(cmd))
            run = Path(tmp) / f"run-{i}"
            wall = timed([*CLRCTL, "train", args.config, "--run-dir", str(run), "-q"])
            elapsed = json.loads((run / "summary.json").read_text())["elapsed_s"]
            train_overhead.append((wall, elapsed))
    wall, elapsed = min(train_overhead, key=lambda pair: pair[0] - pair[1])
    torch_s = best["python -c 'import torch'"]
    print(f"best of {args.repeats}, python {sys.version.split()[0]}")
    print("| what | seconds |\n| --- | --- |")
    for name, seconds in best.items():
        print(f"| `{name}` | {seconds:.2f} |")
    print(f"| `clrctl train {args.config}` (wall) | {wall:.2f} |")
    print(f"| of which training (`elapsed_s`) | {elapsed:.2f} |")
    print(f"| start-up beyond training + import torch | {wall - elapsed - torch_s:.2f} |")
    floor = best["import torch + build an optimizer"]
    print(f"| start-up beyond training + import torch and its first optimizer | {wall - elapsed - floor:.2f} |")


if __name__ == "__main__":
    main()
