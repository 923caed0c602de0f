"""TensorBoard event files in ``RUN/tensorboard/`` (``train.tensorboard: true``, ``--tensorboard``,
``clrctl export tensorboard``), written by ``torch.utils.tensorboard.SummaryWriter``.

What is written is derived from the rows of ``metrics.csv`` (the same rows, live during
training or read back by ``export``), so the events and the CSV agree by construction:

- per step: ``loss``, ``lr`` (and ``lr/<group>`` per parameter group where groups train at
  different LRs or a stage freezes some), ``momentum``;
- per evaluation: ``val_loss``, ``val_acc`` (at the step after which it was measured);
- at the end: the hyper-parameters and final metrics through ``add_hparams``;
- a range test: ``range_test/loss``, ``range_test/smoothed_loss``, ``range_test/val_acc``
  and ``range_test/lr`` per step, the range-test plot as an image, and the suggestion as text.

The ``tensorboard`` package is the extra ``clrctl[tensorboard]``; :func:`require` checks for it
before any run directory exists.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional

from clrctl.compat import TENSORBOARD_INSTALL, require_tensorboard
from clrctl.engine.callbacks import Callback

DIRNAME = "tensorboard"
INSTALL = TENSORBOARD_INSTALL
HPARAM_METRICS = ("final_val_acc", "best_val_acc", "final_val_loss", "steps_to_target")


def require(key: str = "train.tensorboard") -> None:
    """One line and exit 2 when the ``tensorboard`` package is missing."""
    require_tensorboard(key)


def _writer(logdir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(logdir))


def _number(value: Any) -> Optional[float]:
    if value in (None, ""):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class TrainLogger:
    """Scalars of a training run from its metrics rows; :meth:`close` adds the hparams."""

    active = True  # (the trainer builds row dicts for it only then)

    def __init__(self, run_path: Path, config, groups: list[dict[str, Any]], logdir: Optional[Path] = None):
        self.config = config
        self.writer = _writer(logdir or Path(run_path) / DIRNAME)
        self.mults = _group_mults(config, groups)
        self.frozen = {stage.name: stage.freeze for stage in config.plan()}
        self.first_stage = config.plan()[0].name

    def rows(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            step = int(row["step"])
            for key in ("loss", "lr", "momentum"):
                value = _number(row.get(key))
                if value is not None:
                    self.writer.add_scalar(key, value, step)
            stage = row.get("stage") or self.first_stage
            for name, mult in self.mults.items():
                if name not in self.frozen.get(stage, ()):
                    self.writer.add_scalar(f"lr/{name}", float(row["lr"]) * mult, step)
            for key in ("val_loss", "val_acc"):
                value = _number(row.get(key))
                if value is not None:
                    self.writer.add_scalar(key, value, step + 1)  # measured after that step's update
        self.writer.flush()

    def close(self, summary: Optional[dict[str, Any]] = None) -> None:
        if summary is not None:
            metrics = {f"hparam/{k}": float(summary[k]) for k in HPARAM_METRICS if _number(summary.get(k)) is not None}
            self.writer.add_hparams(hparams(self.config), metrics or {"hparam/steps": float(summary.get("steps", 0))},
                                    run_name="hparams")
        self.writer.close()


class NoLogger:
    """``train.tensorboard: false``: every hook does nothing."""

    active = False

    def rows(self, rows) -> None: ...

    def close(self, summary=None) -> None: ...


class TensorBoardRows(Callback):
    """The loop callback: each flush's metrics rows as events; the summary at the end."""

    def __init__(self, logger: "TrainLogger", columns: list[str]):
        self.logger, self.columns = logger, columns

    def on_flush(self, loop, rows, diverged: bool) -> None:
        self.logger.rows([dict(zip(self.columns, row)) for row in rows])

    def on_end(self, loop, status, summary) -> None:
        self.logger.close(summary)


def logger(setup, run) -> "TrainLogger | NoLogger":
    """The trainer's logger: a :class:`TrainLogger` when ``train.tensorboard`` is on."""
    from clrctl.engine import ddp as distributed

    if not setup.config.train.tensorboard or not distributed.is_main():  # rank 0 writes, as for all files
        return NoLogger()
    return TrainLogger(run.path, setup.config, setup.describe_groups())


def _group_mults(config, groups: list[dict[str, Any]]) -> dict[str, float]:
    """Per-group LR multipliers, when they differ from one line (as ``plots/lr.png`` draws them)."""
    groups = [g for g in groups if g.get("parameters")]
    frozen = any(stage.freeze for stage in config.plan())
    if not groups or (all(g["lr_mult"] == 1 for g in groups) and not frozen):
        return {}
    return {g["name"]: float(g["lr_mult"]) for g in groups}


def hparams(config) -> dict[str, Any]:
    """The settings a run is compared by, flat and scalar (what ``add_hparams`` accepts)."""
    plan = config.plan()
    policy, optimizer = plan[0].policy, plan[0].optimizer
    out: dict[str, Any] = {
        "name": config.name, "seed": config.seed, "dataset": config.dataset.name, "model": config.model.name,
        "batch_size": config.dataset.batch_size, "optimizer": optimizer.name, "momentum": optimizer.momentum,
        "weight_decay": optimizer.weight_decay, "policy": policy.name,
        "label_smoothing": config.train.label_smoothing, "stages": len(plan),
    }
    bounds = getattr(policy, "bounds", None)
    if bounds:
        out["base_lr"], out["max_lr"] = float(bounds[0]), float(bounds[1])
    elif getattr(policy, "lr", None) is not None:
        out["lr"] = float(policy.lr)
    return out


# ---------------------------------------------------------------------------------------
# Range tests


def write_range_test(logdir: Path, rows: list[dict[str, Any]], suggestion: dict[str, Any],
                     plot: Optional[Path] = None) -> None:
    """One sweep's events: its curves per step, the plot as an image, the suggestion as text."""
    writer = _writer(logdir)
    try:
        for row in rows:
            step = int(row["step"])
            for key in ("lr", "loss", "smoothed_loss", "val_loss", "val_acc"):
                value = _number(row.get(key))
                if value is not None:
                    writer.add_scalar(f"range_test/{key}", value, step)
        if plot is not None and plot.is_file():
            import matplotlib.image

            writer.add_image("range_test/plot", matplotlib.image.imread(str(plot))[..., :3], 0, dataformats="HWC")
        writer.add_text("range_test/suggestion", suggestion_text(suggestion), 0)
    finally:
        writer.close()


def suggestion_text(suggestion: dict[str, Any]) -> str:
    """The suggestion as a Markdown table (TensorBoard's text tab renders Markdown)."""
    def fmt(lr: Optional[float]) -> str:
        return "-" if lr is None else f"{lr:.4g}"

    lines = ["| | lr | rule |", "|---|---|---|",
             f"| base_lr | {fmt(suggestion['base_lr'])} | {suggestion.get('base_rule') or '-'} |",
             f"| max_lr | {fmt(suggestion['max_lr'])} | {suggestion.get('max_rule') or '-'} |"]
    for name, entry in (suggestion.get("candidates") or {}).items():
        lines.append(f"| {name} | {fmt(entry['lr'])} | {entry['rule'] if entry['lr'] is not None else entry['reason']} |")
    if suggestion.get("reason"):
        lines.append(f"\nno bounds: {suggestion['reason']}")
    return "\n".join(lines)


def range_test_events(run_path: Path, summary: dict[str, Any], logdir: Optional[Path] = None) -> None:
    """Events of a range-test run directory (one seed, or ``seeds/seed-K`` each) in
    ``logdir`` (default ``RUN/tensorboard``)."""
    from clrctl.files.atomic import read_csv

    run_path = Path(run_path)
    logdir = logdir or run_path / DIRNAME
    plot = run_path / "plots" / "range_test.png"
    per_seed = summary.get("per_seed")
    if not per_seed:
        write_range_test(logdir, read_csv(run_path / "metrics.csv"), summary["suggestion"], plot)
        return
    for entry in per_seed:
        seed_dir = run_path / entry["path"]
        seed_summary = json.loads((seed_dir / "summary.json").read_text())
        write_range_test(logdir / f"seed-{entry['seed']}", read_csv(seed_dir / "metrics.csv"),
                         seed_summary["suggestion"])
    write_range_test(logdir / "median", [], summary["suggestion"], plot)


# ---------------------------------------------------------------------------------------
# clrctl export tensorboard: events from the CSVs of existing runs


def export(path: Path) -> list[Path]:
    """Write ``RUN/tensorboard/`` for a run, a range-test run (one seed or several) or each run
    of a seed group; returns the directories written. Events are derived from the CSVs, so an
    existing ``RUN/tensorboard/`` is replaced (written beside it first, then swapped in).
    Raises InputError for what is not a finished run."""
    from clrctl.errors import InputError
    from clrctl.files.atomic import read_json

    path = Path(path)
    if (path / "group.json").is_file():
        runs = [path / name for name in read_json(path / "group.json").get("runs", [])]
        return [out for run in runs for out in export(run)]
    if not (path / "run.json").is_file():
        raise InputError(f"{path}: not a run directory or seed group (no run.json / group.json)")
    if not (path / "summary.json").is_file():
        raise InputError(f"{path}: the run has no results yet (no summary.json)")
    info, summary = read_json(path / "run.json"), read_json(path / "summary.json")
    per_seed = info.get("kind") == "range-test" and summary.get("per_seed")  # metrics in seeds/seed-K/
    if not per_seed and not (path / "metrics.csv").is_file():
        raise InputError(f"{path}: the run has no results yet (no metrics.csv)")
    target = path / DIRNAME
    staging = path / f".{DIRNAME}.export"
    _remove(staging)  # (left by an export that was killed)
    if info.get("kind") == "range-test":
        range_test_events(path, summary, staging)
    else:
        _train_events(path, info, summary, staging)
    _remove(target)
    staging.rename(target)
    return [target]


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _train_events(path: Path, info: dict[str, Any], summary: dict[str, Any], logdir: Path) -> None:
    from clrctl.config.schema import load_config
    from clrctl.files.atomic import read_csv

    config = load_config(path / "config.yaml")
    log = TrainLogger(path, config, info.get("groups") or [], logdir)
    try:
        log.rows(read_csv(path / "metrics.csv"))
    finally:
        log.close(summary)
