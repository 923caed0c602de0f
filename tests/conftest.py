"""Shared fixtures: run the real CLI in-process, tiny configs that train in about a second,
reference runs trained once per session, and a signal sent at an exact step.

Torch runs on one CPU thread here (``OMP_NUM_THREADS=1`` unless set; the subprocesses the
tests start inherit it): the models are tiny, and two or more threads per process on a
small, shared machine (pytest-xdist runs two workers) spend most of a step waiting for each
other. Results depend on the thread count only through its being the same in the runs a
test compares, which it is (``OMP_NUM_THREADS=2 pytest`` runs the suite on two)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from clrctl.engine.callbacks import Callback
import yaml

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # (before torch is imported: it reads this once)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TESTS = Path(__file__).resolve().parent


def run_cli(*args: str) -> int:
    """``clrctl ARGS`` in-process; returns the exit code."""
    from clrctl.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def tiny_config(tmp_path):
    """Write a small digits config (override anything with keyword sections)."""

    def make(name: str = "tiny", **sections) -> Path:
        config = {
            "name": name, "seed": 0, "device": "cpu",
            "dataset": {"name": "digits", "batch_size": 64},
            "model": {"name": "mlp", "hidden": [32]},
            "optimizer": {"name": "sgd", "momentum": 0.9},
            "policy": {"name": "triangular2", "bounds": [0.02, 0.1], "stepsize": 7},
            "train": {"epochs": 2, "eval_every": 5},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return make


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """``reference_run(CONFIG, *ARGS)``: the directory of a finished ``clrctl train CONFIG
    ARGS -q`` (in-process), trained once per session (per xdist worker) for each config text
    and arguments — the uninterrupted run that interrupted, killed and resumed runs are
    compared with. Read it only; :func:`copy_run` gives a copy to change."""
    root = tmp_path_factory.mktemp("references")
    done: dict[tuple, Path] = {}

    def get(config: Path, *args: str) -> Path:
        key = (Path(config).read_text(), tuple(map(str, args)))
        if key not in done:
            run = root / f"ref-{len(done)}"
            with pytest.MonkeyPatch.context() as patch:
                patch.syspath_prepend(str(TESTS))  # (slow_model:build and the like)
                assert run_cli("train", config, *args, "--run-dir", run, "-q") == 0
            done[key] = run
        return done[key]

    return get


class Hold:
    """Holds the slow_model runs of processes started with ``env=hold.env``: each training
    forward after the first ``after`` waits until :meth:`release` (see tests/slow_model.py)."""

    def __init__(self, path: Path, after: int):
        self.path = path
        path.touch()
        self.env = {"SLOW_MODEL_HOLD": str(path), "SLOW_MODEL_AFTER": str(after)}

    def release(self) -> None:
        self.path.unlink(missing_ok=True)

    def engage(self) -> None:
        """Hold again (a process past ``after`` forwards waits from its next one)."""
        self.path.touch()


@pytest.fixture
def hold(tmp_path):
    """``hold(AFTER)``: a :class:`Hold`, released at the end of the test whatever happens."""
    made: list[Hold] = []

    def make(after: int) -> Hold:
        made.append(Hold(tmp_path / f"hold-{len(made)}", after))
        return made[-1]

    yield make
    for held in made:
        held.release()


def copy_run(run: Path, to: Path) -> Path:
    """A copy of the run directory ``run`` at ``to`` (its lock file free, as one left by a
    process that is gone)."""
    shutil.copytree(run, to)
    return to


class KilledAt(Callback):
    """Copies run ``ref`` to ``killed`` right after step ``step``: what a ``kill -9`` there
    leaves (the files as they are, ``running``, the last checkpoint), while the run itself goes
    on to be the uninterrupted one. It waits for a checkpoint being written in the background
    first (a kill during that write rightly resumes from the one before; the tests pin which)."""

    def __init__(self, step: int, ref: Path, killed: Path):
        self.step, self.ref, self.killed = step, ref, killed

    def on_start(self, loop) -> None:
        loop.sync_at([self.step])

    def on_flush(self, loop, rows, diverged) -> None:
        if loop.state.step == self.step:
            from clrctl.runs.checkpoints import Checkpoints

            next(c for c in loop.callbacks if isinstance(c, Checkpoints)).run.wait()
            copy_run(self.ref, self.killed)


class SignalAt:
    """Sends this process ``signals`` (in turn) once, right after global step ``step`` of a
    run: an interrupt from outside, in-process and at an exact step."""

    def __init__(self, step: int, *signals: int):
        self.step, self.signals, self.fired = step, signals or (signal.SIGINT,), False

    def __call__(self, steps_done: int) -> None:
        if steps_done == self.step and not self.fired:
            self.fired = True
            for sig in self.signals:
                signal.raise_signal(sig)


class _SignalAtStep(Callback):
    """The loop flushes after ``fire.step`` (``Loop.sync_at``); the signals come in that flush."""

    def __init__(self, fire: SignalAt):
        self.fire = fire

    def on_start(self, loop) -> None:
        if loop.state.step < self.fire.step:
            loop.sync_at([self.fire.step])

    def on_flush(self, loop, rows, diverged) -> None:
        self.fire(loop.state.step)


@pytest.fixture(autouse=True)
def _plots_only_where_a_test_reads_them(request, monkeypatch):
    """In-process training runs skip drawing their plots — a third of the suite's time — unless
    the test is marked ``plots`` (those check the files); subprocess runs draw them as ever."""
    if request.node.get_closest_marker("plots") is None:
        from clrctl.runs.lifecycle import TrainingRun

        monkeypatch.setattr(TrainingRun, "_plots", lambda self: None)


@pytest.fixture
def signal_cli_at(monkeypatch):
    """``signal_cli_at(STEP, *SIGNALS, label="train")``: the next in-process ``clrctl train``
    of this test gets SIGNALS (default SIGINT) right after global step STEP of its run
    labelled ``label`` ("train", "resume", "seed N": its progress reporter's) — as a Ctrl-C or
    ``kill`` would."""
    from clrctl.runs.lifecycle import TrainingRun

    real = TrainingRun.callbacks

    def arm(step: int, *signals: int, label: str = "train") -> SignalAt:
        fire = SignalAt(step, *signals)

        def callbacks(self, reporter):
            found = real(self, reporter)
            return found + [_SignalAtStep(fire)] if getattr(reporter, "label", None) == label else found

        monkeypatch.setattr(TrainingRun, "callbacks", callbacks)
        return fire

    return arm
