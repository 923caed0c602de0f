"""One training run's life around the loop: its callbacks, its signals, how it ends.

:class:`TrainingRun` assembles the loop (:mod:`clrctl.engine.loop`) with the strategy of this
process and the callbacks that write the run directory, then runs it and turns each way it
can end into files and a status: ``completed``, ``diverged``, ``interrupted`` (resumable:
the last rows and a checkpoint are written first) or ``failed``. Every ending writes the
summary and the plots, each file tried even when one before failed (a full disk), and
run.json's status last — a run marked finished has all its files.

:func:`open_run` is how every kind of run (train, a seed of a group, a sweep's point, the
range test, the Python API) gets its directory.

Where a new kind of watcher goes: a :class:`~clrctl.engine.callbacks.Callback`, added in
:meth:`TrainingRun.callbacks` (or passed in ``extra``); the loop does not change.
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Optional

from pathlib import Path

from clrctl import interrupts
from clrctl.engine import ddp
from clrctl.engine.callbacks import Callback
from clrctl.engine.loop import Diverged, Loop, LoopState, Stopped
from clrctl.engine.setup import Setup
from clrctl.engine.strategy import Strategy, for_process
from clrctl.errors import DataError, Interrupted, RunFailed
from clrctl.files.atomic import WriteFailed, failure_line
from clrctl.runs import launch
from clrctl.runs.checkpoints import Checkpoints, restore
from clrctl.runs.rundir import NullRunDir, RunDir
from clrctl.track import tensorboard
from clrctl.track.averaging import averaging_callbacks
from clrctl.track.dropout import dropout_callbacks
from clrctl.track.csvlog import EpochsLog, MetricsLog, log_columns
from clrctl.track.early_stopping import EarlyStopping
from clrctl.track.evaluations import Evaluations
from clrctl.track.tta import FlipEvaluation
from clrctl.track.reporter import Progress, Reporter


def open_run(runs_root: str | Path, name: str, run_dir: Optional[str | Path], info: dict[str, Any],
             config: dict[str, Any], *, resumable: bool = True) -> "RunDir | NullRunDir":
    """A new run directory, claimed by this process, with run.json and config.yaml written
    together — or no directory at all (a signal waits until both are there). Under DDP rank 0
    makes it and tells the other ranks, which get a :class:`NullRunDir` of the same path."""
    if not ddp.is_main():  # only rank 0 writes; the others learn where
        return NullRunDir(ddp.main_path())
    run = None
    try:
        with interrupts.deferred():
            run = RunDir.create(runs_root, name, run_dir, resumable=resumable)
            try:
                run.begin(info, config)
            except BaseException:
                run.release()
                run = None
                raise
    except KeyboardInterrupt:  # (deferred: raised once both files are there)
        if run is None:
            raise
        raise InterruptedRun(run) from None
    finally:
        launch.tell_path(run)  # (None: rank 0 failed to make it, and says why)
    return run


class InterruptedRun(KeyboardInterrupt):
    """A signal as :func:`open_run` made the directory ``run``: the caller marks it interrupted."""

    def __init__(self, run: RunDir):
        super().__init__()
        self.run = run


class TrainingRun:
    """A :class:`Setup` trained into ``run`` (a RunDir; a NullRunDir on a process that does
    not write), continuing from ``state`` when resumed."""

    loop_class = Loop  # (a seed of a vectorised group: engine.seedloop.SeedView)

    def __init__(self, setup: Setup, run, reporter: Optional[Reporter] = None,
                 state: Optional[LoopState] = None, extra: tuple[Callback, ...] = (),
                 strategy: Optional[Strategy] = None):
        self.setup, self.run = setup, run
        self.strategy = strategy or for_process(setup.device)
        self.checkpoints: Optional[Checkpoints] = None
        callbacks = self.callbacks(reporter or Reporter()) + list(extra)
        self.loop = self.loop_class(setup, self.strategy, callbacks, state)
        self._signal: Optional[str] = None
        self._finishing = False  # the loop is over: signals are recorded, never raised

    def callbacks(self, reporter: Reporter) -> list[Callback]:
        """The run's own watchers, in the order their events must run: the evaluation record
        first (the checkpoints read it), files next, the progress display last."""
        s, train = self.setup, self.setup.config.train
        found: list[Callback] = [Evaluations(train.target)]
        if train.tta:  # (on every rank: its evaluation is reduced over them)
            found.append(FlipEvaluation())
        if train.early_stop:
            found.append(EarlyStopping(train.early_stop))
        # averaged weights and snapshots (only when their keys are set): before the files, whose
        # epochs.csv rows they add to
        found += averaging_callbacks(s, self.run, self.strategy)
        found += dropout_callbacks(s)  # (model.dropout: its generators travel in last.pt)
        if self.strategy.writes:
            metric_columns, epoch_columns = log_columns(s.config)
            self.checkpoints = Checkpoints(self.run, train.checkpoint_every)
            found += [MetricsLog(self.run, metric_columns), EpochsLog(self.run, epoch_columns), self.checkpoints]
            tb = tensorboard.logger(s, self.run)  # does nothing unless train.tensorboard
            if tb.active:
                found.append(tensorboard.TensorBoardRows(tb, metric_columns))
        return found + [Progress(reporter)]

    @property
    def state(self) -> LoopState:
        return self.loop.state

    def restore(self, saved: dict[str, Any]) -> None:
        restore(self.loop, saved)

    # -- running and ending ----------------------------------------------------------
    def run_all(self) -> dict[str, Any]:
        """Train to the end. Raises RunFailed (diverged, failed) or Interrupted; each leaves a
        summary, plots and a final status. The run's signal handler stays in place until
        then: signals after the first that stops the run do not cut the finishing short."""
        with self._signals():
            try:
                self.loop.run()
            except BaseException as err:  # noqa: BLE001 - each way of ending has its files
                summary = self.end(err)
            else:
                summary = self._finish("completed")
        if self._signal:  # a signal while the run was finishing: it is complete, and stops here
            raise Interrupted(f"interrupted as the run completed (its files are complete): {self.run.path}")
        return summary

    def end(self, err: BaseException) -> dict[str, Any]:
        """End the run on what stopped its loop, ``err``: the summary of a run stopped by a
        callback (early stopping); for every other ending the error to report is raised
        (RunFailed, Interrupted or ``err`` itself) once the run's files are written."""
        loop, state = self.loop, self.loop.state
        if isinstance(err, Diverged):
            # The steps after the diverged one (up to the sync that saw it) trained on NaN
            # weights and are not in metrics.csv: the summary counts the steps logged.
            state.step = err.step + 1
            self._finish("diverged", diverged_at={"step": err.step, "lr": err.lr, "loss": err.loss})
            raise RunFailed(
                f"loss became {err.loss} at step {err.step} (lr {err.lr:.4g}); the run is kept as 'diverged' "
                "in " + str(self.run.path) + " — the LR is too high for this model: `clrctl range-test` finds bounds"
            ) from None
        if isinstance(err, Stopped):
            self._finishing = True
            if err.interrupted:
                self._finish("interrupted", loop.flush, self._checkpoint)
                raise self._interrupted() from None
            return self._finish(err.status or "completed", loop.flush, self._checkpoint, stop_reason=err.reason)
        if isinstance(err, KeyboardInterrupt):  # a second signal ("stop now"), or one raised mid-step: no
            # checkpoint of a step that may be half done; the last one resumes, rows after it redone
            self._finish("interrupted")
            raise self._interrupted() from None
        if isinstance(err, (DataError, OSError, WriteFailed)):  # unreadable data, a full disk: exit 1
            self._finish_failed()
            raise self._failed(err) from err
        self._finish_failed()
        raise err

    def _checkpoint(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.save(self.loop)

    def _interrupted(self) -> Interrupted:
        return Interrupted(f"interrupted at step {self.state.step}; resume with: clrctl train --resume {self.run.path}")

    def _finish(self, status: str, *first: Callable[[], None], **extra: Any) -> dict[str, Any]:
        """The run's last files, then its status: ``first`` (the interrupted run's last rows
        and checkpoint), every callback's ``on_end`` (best.pt, the CSVs closed, TensorBoard),
        summary.json, the plots — each tried even when one before failed — and then
        run.json's status: ``status``, or ``failed`` when a file could not be written (that
        error is raised)."""
        summary, problems = self.finish_files(status, *first, **extra)
        if self.strategy.writes:  # diverged and interrupted runs get plots too
            _attempt(self._plots, problems)
        return self.finish_status(status, summary, problems)

    def finish_files(self, status: str, *first: Callable[[], None],
                     **extra: Any) -> tuple[dict[str, Any], list[Exception]]:
        """:meth:`_finish` up to the plots: (the summary, the errors met so far)."""
        self._finishing = True  # (the run's handler only records signals from now on)
        problems: list[Exception] = []
        for step in first:
            _attempt(step, problems)
        summary = self.summary(status, **extra)
        for callback in self.loop.callbacks:
            _attempt(lambda: callback.on_end(self.loop, status, summary), problems)
        _attempt(lambda: self.run.write_summary(summary), problems)
        return summary, problems

    def finish_status(self, status: str, summary: dict[str, Any], problems: list[Exception]) -> dict[str, Any]:
        """:meth:`_finish` after the plots: run.json's status, last (the error of ``problems`` raised)."""
        self.run.set_status("failed" if problems else status)
        if problems:
            raise self._failed(problems[0]) from problems[0]
        return summary

    def _finish_failed(self) -> None:
        """Finish a run that failed: the status is ``failed`` whatever else cannot be written,
        and the error that failed it is the one to report."""
        try:
            self._finish("failed")
        except Exception:  # noqa: BLE001 - (run.json says 'failed' all the same)
            pass

    def _failed(self, err: BaseException) -> BaseException:
        """The one-line error of a run that failed on ``err`` (a file it could not write, data
        it could not read); other errors as they are."""
        if isinstance(err, (DataError, OSError, RunFailed)):
            return RunFailed(f"{failure_line(err)} (the run is kept as 'failed' in {self.run.path})")
        return err

    def _plots(self) -> None:
        from clrctl.runs.plots import render_plots

        render_plots(self.run.path, self.setup.config, train_samples=self.setup.data.train.num_samples)

    def summary(self, status: str, **extra: Any) -> dict[str, Any]:
        state, s = self.state, self.setup
        return {
            "status": status, "steps": state.step, "epochs": round(state.step / s.steps_per_epoch, 4),
            "elapsed_s": round(self.loop.elapsed(), 3), "final_val_acc": state.final_val_acc,
            "best_val_acc": state.best_val_acc, "best_step": state.best_step,
            "final_val_loss": state.final_val_loss, "steps_to_target": state.steps_to_target,
            "target": s.config.train.target, "planned_steps": s.total_steps,
            "steps_per_epoch": s.steps_per_epoch,
            **({"stages": state.stages} if s.config.has_stages else {}), **extra,
        }

    # -- signals ---------------------------------------------------------------------
    def _signals(self):
        """SIGINT/SIGTERM: finish the current step, then stop cleanly. A second one aborts the
        step — once: any signal after that, or once the run is finishing, is only recorded, so
        the summary, plots and status are always written (any number of signals: exit 130)."""

        def handler(signum, _frame):
            interrupts.stopping()  # and so after the loop, until the interrupt is reported
            finishing = self._finishing or self.loop.stopping
            if self._signal and not finishing:  # second signal: stop now
                self._finishing = True
                raise KeyboardInterrupt
            self._signal = self._signal or signal.Signals(signum).name
            if not finishing:
                self.loop.request_stop(self._signal)

        return interrupts.handled_by(handler)


def _attempt(step: Callable[[], None], problems: list[Exception]) -> None:
    """Run one step of a run's finishing; an error is noted and the next steps still run."""
    try:
        step()
    except Exception as err:  # noqa: BLE001 - raised by _finish once every step was tried
        problems.append(err)
