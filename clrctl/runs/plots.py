"""The plots of a training run, drawn from its CSVs (raw data kept; everything drawn is
derived from it): at the run's end, and again with ``clrctl export plots``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from clrctl.config.schema import Config, load_config
from clrctl.errors import InputError
from clrctl.runs.rundir import RunDir, claim, holder, is_live, read_csv, read_json, release
from clrctl.series import batch_sizes, group_lr_traces, moving_average, policy_names, stage_starts


def lacks_plots(path: str | Path) -> bool:
    """A completed training run whose plots are missing or empty (a crash while drawing them)."""
    path = Path(path)
    try:
        info = read_json(path / "run.json")
    except InputError:
        return False
    if not isinstance(info, dict) or info.get("kind") != "train" or info.get("status") != "completed":
        return False
    return any(not p.is_file() or p.stat().st_size == 0 for p in (path / "plots" / n for n in TRAIN_PLOTS))


def redraw_plots(path: str | Path) -> list[Path]:
    """A training run's plots drawn again from its CSVs and run.json (``clrctl export plots``);
    claims the directory while it draws. Returns the files written."""
    path = Path(path)
    run = RunDir.open(path)
    info = run.read_run()
    if not isinstance(info, dict) or info.get("kind") != "train":
        raise InputError(f"{path}: not a training run (kind {info.get('kind') if isinstance(info, dict) else None!r})")
    if info.get("status") == "running" and is_live(path):
        raise InputError(f"{path}: still running ({holder(path)}); its plots are drawn when it ends")
    config = load_config(path / "config.yaml")
    claim(path)
    try:
        render_plots(path, config, train_samples=_train_samples(config, info))
    finally:
        release(path)
    return [path / "plots" / name for name in TRAIN_PLOTS if (path / "plots" / name).is_file()]


def _train_samples(config: Config, info: dict[str, Any]) -> Optional[int]:
    """The training split's size (the loss plot weights each step by its batch): from run.json
    when recorded, else by building the data set as the run did."""
    if isinstance(info.get("train_samples"), int):
        return info["train_samples"]
    from clrctl.data.datasets import build_data

    import torch

    return build_data(config.dataset, config.seed, torch.device("cpu")).train.num_samples


TRAIN_PLOTS = ("lr.png", "loss.png", "accuracy.png")


def _floats(rows: list[dict[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows], dtype=float)


def _group_traces(path: Path, config: Config, rows, lr: np.ndarray) -> Optional[dict[str, np.ndarray]]:
    """One LR line per parameter group (from run.json's groups), when they differ from the
    policy's single line: another lr_mult, or a stage that freezes them."""
    groups = [g for g in read_json(path / "run.json").get("groups") or [] if g.get("parameters")]
    frozen = {stage.name: stage.freeze for stage in config.plan()}
    if not groups or (all(g["lr_mult"] == 1 for g in groups) and not any(frozen.values())):
        return None
    stage_of_step = [r.get("stage") or config.plan()[0].name for r in rows]
    return group_lr_traces(lr, stage_of_step, {g["name"]: g["lr_mult"] for g in groups}, frozen)


def render_plots(path: Path, config: Config, train_samples: Optional[int] = None) -> None:
    """lr.png, loss.png and accuracy.png from the run's CSVs; ``train_samples`` (the training
    split's size) lets the loss average weight each step by its batch size."""
    from clrctl.plots.train import plot_accuracy, plot_loss, plot_lr

    run = RunDir(path)
    rows, epochs = read_csv(path / "metrics.csv"), read_csv(path / "epochs.csv")
    if not rows:
        return
    steps, lr, loss = _floats(rows, "step"), _floats(rows, "lr"), _floats(rows, "loss")
    momentum = _floats(rows, "momentum")
    evals = [r for r in rows if r.get("val_loss")]  # val_acc is blank for a regression (train.loss: mse)
    eval_steps = _floats(evals, "step") + 1  # evaluated after that step's update
    title = f"{config.name}: {policy_names(config)} on {config.dataset.name}/{config.model.name}"
    plots = run.plots_dir
    varies = np.isfinite(momentum).any() and np.nanmax(momentum) > np.nanmin(momentum)
    plot_lr(plots / "lr.png", steps, lr, momentum if varies else None, title, _group_traces(path, config, rows, lr),
            stage_starts(steps, [r.get("stage") for r in rows]) if config.has_stages else None)
    window = max(5, len(loss) // 50)
    weights = None
    if train_samples and not config.dataset.drop_last:  # raw losses in metrics.csv; sizes from the split
        batch = config.dataset.batch_size
        weights = batch_sizes(steps, math.ceil(train_samples / batch), batch, train_samples)
    plot_loss(plots / "loss.png", steps, loss, moving_average(loss, window, weights), eval_steps,
              _floats(evals, "val_loss"), title)
    target = (config.train.target or {}).get("val_acc")
    recorded = read_json(path / "summary.json").get("steps_to_target") if target is not None else None
    plot_accuracy(plots / "accuracy.png", _floats(epochs, "step"), _floats(epochs, "train_acc"), eval_steps,
                  _floats(evals, "val_acc"), target, recorded, title)
