"""The head-only stage's time with precomputed features (``train.precompute``) and without.

Two fine-tunes, each trained up to the end of its head-only stage (the later stages are left
out: they train the same either way), with ``train.precompute=on`` (or ``auto`` where the stage
has two or more epochs) and ``off``, side by side, interleaved, ``--repeats`` times each; the
stage's time is the loop's ``elapsed_s`` at the stage's last epoch (``epochs.csv``): its
training steps, its evaluations and, with precompute, computing the features.

- ``digits-finetune``: ``configs/digits-finetune.yaml`` as bundled (a 1-epoch head-only stage,
  from ``configs/digits-pretrain.yaml`` trained first), and with ``stages.0.epochs=5``;
- ``resnet18-folder``: ``torchvision:resnet18`` on an image folder this script writes (4 classes x
  40 random 64x64 PNGs, ``image_size: 64``, batch 16, ``num_workers: 0``), from a randomly
  initialised resnet18 saved as the "pretrained" state_dict (offline: no download), with
  ``train.bn_freeze: true``; 1 and 5 head-only epochs.

Run (CPU, one thread; on a shared machine prefix ``nice -n 5``)::

    python benchmarks/precompute.py [--repeats 3] [--out /tmp/precompute-bench] [--only digits-finetune]

Prints one line per case: the median stage time of each mode and their ratio (off / on).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def clrctl(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run([sys.executable, "-m", "clrctl", *map(str, args), "-q"], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def head_only(config: dict, epochs: int | None) -> dict:
    """``config`` trained up to the end of its first stage (that stage ``epochs`` long, if given)."""
    config = json.loads(json.dumps(config))
    config["stages"] = config["stages"][:1]
    if epochs is not None:
        config["stages"][0]["epochs"] = epochs
    return config


def stage_time(run: Path) -> float:
    with open(run / "epochs.csv", newline="") as handle:
        return float(list(csv.DictReader(handle))[-1]["elapsed_s"])


def image_folder(root: Path, classes: int = 4, per_class: int = 40, size: int = 64) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")


def resnet18_config(work: Path) -> dict:
    import torch

    sys.path.insert(0, str(REPO))
    from clrctl.compat import import_torchvision

    image_folder(work / "images")
    torch.manual_seed(0)
    torch.save(import_torchvision().models.resnet18(num_classes=1000).state_dict(), work / "resnet18.pt")
    return {
        "name": "resnet18-folder", "seed": 0, "device": "cpu",
        "dataset": {"name": "imagefolder", "root": str(work / "images"), "image_size": 64, "batch_size": 16,
                    "num_workers": 0, "val_fraction": 0.25, "drop_last": True},
        "model": {"name": "torchvision:resnet18", "weights": str(work / "resnet18.pt")},
        "optimizer": {"name": "sgd", "momentum": 0.9},
        "train": {"bn_freeze": True, "checkpoint_every": 60},
        "stages": [{"name": "head-only", "epochs": 1, "freeze": ["body"],
                    "policy": {"name": "one_cycle", "bounds": [0.001, 0.01]}},
                   {"name": "all", "epochs": 1, "policy": {"name": "one_cycle", "bounds": [0.0001, 0.001]}}],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--only", choices=["digits-finetune", "resnet18-folder"], default=None, help="one fine-tune only")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="precompute-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    clrctl("train", REPO / "configs" / "digits-pretrain.yaml", "device=cpu", "--run-dir", work / "digits-pretrain",
           cwd=work)
    digits = yaml.safe_load((REPO / "configs" / "digits-finetune.yaml").read_text())
    digits["model"]["weights"] = str(work / "digits-pretrain")
    digits["device"] = "cpu"
    cases = [("digits-finetune", digits, None), ("digits-finetune", digits, 5)]
    if args.only != "digits-finetune":
        resnet = resnet18_config(work)
        cases += [("resnet18-folder", resnet, None), ("resnet18-folder", resnet, 5)]
    cases = [case for case in cases if args.only in (None, case[0])]
    results = []
    for name, config, epochs in cases:
        config = head_only(config, epochs)
        length = config["stages"][0]["epochs"]
        path = work / f"{name}-{length}ep.yaml"
        path.write_text(yaml.safe_dump(config))
        fast_mode = "auto" if length >= 2 else "on"
        times: dict[str, list[float]] = {fast_mode: [], "off": []}
        for repeat in range(args.repeats):
            for mode in (fast_mode, "off"):  # interleaved: the machine's load hits both alike
                run = work / "runs" / f"{name}-{length}ep-{mode}-{repeat}"
                clrctl("train", path, f"train.precompute={mode}", "--run-dir", run, cwd=work)
                used = json.loads((run / "run.json").read_text())["precompute"]["stages"][0]["used"]
                assert used == (mode != "off"), (run, used)
                times[mode].append(stage_time(run))
        fast, slow = statistics.median(times[fast_mode]), statistics.median(times["off"])
        results.append({"case": name, "head_only_epochs": length, "precompute": fast_mode, "with_s": fast,
                        "without_s": slow, "speedup": slow / fast})
        print(f"{name:16s} head-only {length} epoch(s): precompute={fast_mode} {fast:7.3f} s, "
              f"off {slow:7.3f} s, x{slow / fast:.2f} (median of {args.repeats})", flush=True)
    (work / "precompute.json").write_text(json.dumps(results, indent=2))
    print(f"runs and precompute.json in {work}")


if __name__ == "__main__":
    main()
