"""metrics.csv and epochs.csv as loop callbacks: the rows of each flush and of each epoch,
appended and flushed so that a killed run keeps what it logged (SPEC.md, "Run directory")."""

from __future__ import annotations

from clrctl.engine.callbacks import EPOCH_COLUMNS, METRIC_COLUMNS, Callback
from clrctl.track.averaging import epoch_columns


def log_columns(config) -> tuple[list[str], list[str]]:
    """The columns of metrics.csv and of epochs.csv (with a stage column when there are stages)."""
    extra = ["stage"] if config.has_stages else []
    evaluated = ["tta_val_acc"] if config.train.tta else []  # (track/tta.py)
    # train.clip_grad_norm: each step's pre-clip total gradient norm, the last column
    norm = ["grad_norm"] if config.train.clip_grad_norm is not None else []
    return METRIC_COLUMNS + extra + norm, EPOCH_COLUMNS + epoch_columns(config) + evaluated + extra


class MetricsLog(Callback):
    """metrics.csv: one row per step, written at each flush (a diverged flush: up to the
    diverged step, which is the file's last row)."""

    def __init__(self, run, columns: list[str]):
        self.log = run.csv("metrics.csv", columns)

    def on_flush(self, loop, rows, diverged: bool) -> None:
        self.log.write_lists(rows)
        self.log.flush()

    def on_end(self, loop, status, summary) -> None:
        self.log.close()


class EpochsLog(Callback):
    """epochs.csv: one row per finished epoch."""

    def __init__(self, run, columns: list[str]):
        self.log = run.csv("epochs.csv", columns)

    def on_epoch_end(self, loop, row) -> None:
        self.log.write([row])
        self.log.flush()

    def on_end(self, loop, status, summary) -> None:
        self.log.close()
