"""Test-time augmentation (``train.tta: hflip``) as a loop callback: after each evaluation,
a second one whose logits average each validation image and its horizontal flip.

``metrics.csv`` keeps the plain evaluation; ``epochs.csv`` gets ``tta_val_acc`` (the latest
TTA evaluation, as its ``val_acc`` is the latest plain one) and ``summary.json``
``final_tta_val_acc``. Under DDP every rank evaluates its share and the sums are reduced as
the plain evaluation's are (the strategy's ``eval_reduce``), so this callback runs on every
rank. Added only when ``train.tta`` is set: nothing happens per step either way.
"""

from __future__ import annotations

from clrctl.engine.callbacks import Callback
from clrctl.engine.step import evaluate

KEY = "tta_val_acc"  # in loop.state.extras: a resumed run's epochs.csv and summary go on from it


class FlipEvaluation(Callback):
    """The TTA accuracy of every evaluation, kept in the loop's state for the epoch rows and
    the summary."""

    def on_eval(self, loop, step, val_loss, val_acc) -> None:
        s = loop.setup
        _, acc = evaluate(s.model, loop.data.val, s.loss_fn, loop.strategy.eval_reduce, hflip=True)  # (the stage's size)
        loop.state.extras[KEY] = acc

    def on_epoch_end(self, loop, row) -> None:
        row[KEY] = loop.state.extras.get(KEY)

    def on_end(self, loop, status, summary) -> None:
        summary["final_" + KEY] = loop.state.extras.get(KEY)
