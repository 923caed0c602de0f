"""Hand-made run directories for the compare tests (no tests here; helpers only).

``make_run`` writes exactly what SPEC.md's run directory holds (run.json, config.yaml,
metrics.csv, epochs.csv, summary.json) with numbers chosen by the test, so every expected
value can be worked out by hand.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

import yaml

TRAIN_COLUMNS = ["step", "epoch", "lr", "momentum", "loss", "val_loss", "val_acc"]
RANGE_COLUMNS = ["step", "epoch", "lr", "momentum", "loss", "smoothed_loss", "val_loss", "val_acc"]


def base_config(name: str = "run", seed: int = 0, **changes: Any) -> dict[str, Any]:
    config = {
        "name": name, "seed": seed, "device": "cpu",
        "dataset": {"name": "digits", "batch_size": 32},
        "model": {"name": "mlp", "hidden": [64, 64]},
        "optimizer": {"name": "sgd", "momentum": 0.9},
        "policy": {"name": "fixed", "lr": 0.01},
        "train": {"epochs": 2},
    }
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config


def make_run(
    path: Path,
    evals: dict[int, float],
    steps: int = 100,
    steps_per_epoch: int = 50,
    seed: int = 0,
    status: str = "completed",
    config: Optional[dict[str, Any]] = None,
    summary: Optional[dict[str, Any]] = None,
    lr: float = 0.01,
    elapsed_s: float = 10.0,
    write_summary: bool = True,
) -> Path:
    """A train run: ``evals`` maps row step -> val_acc (val_loss = 1 - val_acc) on eval rows."""
    path.mkdir(parents=True, exist_ok=True)
    _write_json(path / "run.json", {"kind": "train", "status": status, "seed": seed, "start_time": "t0",
                                    "end_time": "t1", "argv": [], "device": "cpu", "versions": {}, "host": "h",
                                    "git": {}})
    (path / "config.yaml").write_text(yaml.safe_dump(config or base_config(seed=seed)))
    rows = []
    for step in range(steps):
        acc = evals.get(step)
        rows.append({"step": step, "epoch": step // steps_per_epoch, "lr": lr, "momentum": 0.9,
                     "loss": 2.0 / (1 + step), "val_loss": "" if acc is None else 1 - acc,
                     "val_acc": "" if acc is None else acc})
    _write_csv(path / "metrics.csv", TRAIN_COLUMNS, rows)
    accs = [evals[s] for s in sorted(evals)]
    epochs = -(-steps // steps_per_epoch)
    _write_csv(path / "epochs.csv", ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "elapsed_s"],
               [{"epoch": e, "step": min(steps, (e + 1) * steps_per_epoch), "train_loss": 0.5, "train_acc": 0.9,
                 "val_loss": "", "val_acc": "", "lr": lr, "elapsed_s": elapsed_s * (e + 1) / epochs}
                for e in range(epochs)])
    if write_summary:
        best_step = max(sorted(evals), key=lambda s: evals[s]) + 1 if evals else None
        payload = {"status": status, "steps": steps, "epochs": epochs, "elapsed_s": elapsed_s,
                   "final_val_acc": accs[-1] if accs else None, "best_val_acc": max(accs) if accs else None,
                   "best_step": best_step, "final_val_loss": 1 - accs[-1] if accs else None,
                   "steps_to_target": None}
        payload.update(summary or {})
        _write_json(path / "summary.json", payload)
    return path


def make_range_test(path: Path, lrs: list[float], losses: list[float], suggestion: dict[str, float],
                    mode: str = "linear", status: str = "completed") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _write_json(path / "run.json", {"kind": "range-test", "status": status, "seed": 0})
    config = base_config(name="rt")
    config["range_test"] = {"start_lr": lrs[0], "end_lr": lrs[-1], "mode": mode}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"step": i, "epoch": 0, "lr": lr, "momentum": 0.9, "loss": loss, "smoothed_loss": loss,
             "val_loss": "", "val_acc": ""} for i, (lr, loss) in enumerate(zip(lrs, losses))]
    _write_csv(path / "metrics.csv", RANGE_COLUMNS, rows)
    _write_json(path / "summary.json", {"status": status, "steps": len(lrs), "suggestion": suggestion})
    return path


def make_group(path: Path, per_seed: dict[int, dict[int, float]], with_group_json: bool = True, **kwargs) -> Path:
    """A seed group: ``per_seed`` maps seed -> evals; writes group.json like ``train --seeds``."""
    path.mkdir(parents=True, exist_ok=True)
    config = kwargs.pop("config", None)
    for seed, evals in per_seed.items():
        run_config = dict(config, seed=seed) if config else base_config(seed=seed)
        make_run(path / f"seed-{seed}", evals, seed=seed, config=run_config, **kwargs)
    if with_group_json:
        _write_json(path / "group.json", {"kind": "group", "name": path.name, "seeds": list(per_seed),
                                          "runs": [f"seed-{s}" for s in per_seed]})
    return path


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload))


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
