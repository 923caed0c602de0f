"""Starting, resuming and grouping training runs: the library behind ``clrctl train``.

Order matters for bad input: the config is validated and the data, model, optimizer and
schedule are built *before* the run directory is created, so a bad config, a missing data
root or a broken model path leaves nothing behind.
"""

from __future__ import annotations

import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

from clrctl import interrupts

from clrctl.files import checkpoint

from clrctl.engine import ddp as distributed
from clrctl.runs import launch
from clrctl.config.schema import Config, load_config
from clrctl.runs.bounds import resolve_bounds_from
from clrctl.errors import ClrctlWarning, InputError, Interrupted, RunFailed
from clrctl.runs.rundir import (NullRunDir, RunDir, WriteFailed, claim, create_group, failure_line, read_json,
                               release, run_info, truncate_csv, utc_now)
from clrctl.engine.setup import Setup, build_setup
from clrctl.engine.callbacks import Callback
from clrctl.engine.loop import LoopState
from clrctl.runs.lifecycle import TrainingRun, open_run
from clrctl.runs.plots import lacks_plots, redraw_plots  # noqa: F401 (redraw_plots: public here too)
from clrctl.track.csvlog import log_columns
from clrctl.track.reporter import Reporter
from clrctl.model.weights import few_keys


def start_training(config: Config, *, runs_root: str | Path = "runs", run_dir: Optional[str | Path] = None,
                   argv: Optional[list[str]] = None, reporter: Optional[Reporter] = None,
                   callbacks: tuple[Callback, ...] = (), setup: Optional[Setup] = None) -> tuple[Path, dict]:
    """Train ``config`` in a new run directory; returns (run path, summary). ``callbacks``
    watch the loop beside the run's own (:mod:`clrctl.engine.callbacks`); ``setup``: one
    already built from this config (a seed group's first seed), else it is built here."""
    config = resolve_bounds_from(config)
    setup = build_setup(config) if setup is None else setup
    info = {**run_info("train", config.seed, str(setup.device), argv), **model_record(setup), **distributed.record(),
            "train_samples": setup.data.train.num_samples}  # (for plots redrawn from the CSVs)
    run = None
    try:
        run = open_run(runs_root, config.name, run_dir, info, config.to_dict())
        return run.path, _run(TrainingRun(setup, run, reporter, extra=callbacks))
    except KeyboardInterrupt as err:  # before the loop's own handler was in place (or a second Ctrl-C)
        run = run or getattr(err, "run", None)
        if run is None:
            raise
        raise _interrupted(run) from None
    except BaseException as err:
        failure = err if run is None or isinstance(run, NullRunDir) else _failed_outside_loop(run, err)
        if failure is err:
            raise
        raise failure from err
    finally:
        if run is not None:
            release(run.path)


def model_record(setup) -> dict[str, Any]:
    """What run.json records of the model: its parameter groups and its starting weights."""
    return {"groups": setup.describe_groups(), "weights": setup.weights,
            "precompute": {"setting": setup.config.train.precompute, "stages": setup.precompute}}


def resume_training(path: str | Path, *, argv: Optional[list[str]] = None,
                    reporter: Optional[Reporter] = None, callbacks: tuple[Callback, ...] = ()) -> tuple[Path, dict]:
    """Continue an interrupted or killed run in its own directory from ``checkpoints/last.pt``;
    rows logged after that checkpoint are dropped and recomputed."""
    if not distributed.is_main():
        return _resume_worker(Path(path), reporter, callbacks)
    if lacks_plots(path):
        return Path(path), _redraw(path)
    run, _ = open_resumable(path)  # (a run, not some other directory, before it gets a .lock)
    claim(run.path)  # refused while another process writes it
    launch.announce(run.path)  # (the launcher of --nproc marks it failed if a rank dies)
    try:
        run, info = open_resumable(path)  # again, now that it is ours: it may have ended meanwhile
        return run.path, _resume(run, info, argv, reporter, callbacks)
    except KeyboardInterrupt:  # before the loop's own handler was in place (or a second Ctrl-C)
        raise _interrupted(run) from None
    except BaseException as err:
        failure = _failed_outside_loop(run, err)
        if failure is err:
            raise
        raise failure from err
    finally:
        release(run.path)


def _redraw(path: str | Path) -> dict[str, Any]:
    """--resume of a completed run without plots: draw them from its CSVs."""
    redraw_plots(path)
    return read_json(Path(path) / "summary.json")


def _failed_outside_loop(run: RunDir, err: BaseException) -> BaseException:
    """An error after the run directory was claimed but outside the loop's own handling (its
    CSVs could not be opened, the checkpoint did not fit the model): a run left ``running``
    is marked ``failed``; a file that could not be written is one line naming it."""
    if run.status() == "running":
        try:
            run.set_status("failed")
        except Exception:  # noqa: BLE001 - the disk may refuse even that; the lock says it is dead
            pass
    if isinstance(err, (OSError, WriteFailed)):
        return RunFailed(f"{failure_line(err)} (the run is kept as 'failed' in {run.path})")
    return err


def open_resumable(path: str | Path) -> tuple[RunDir, dict[str, Any]]:
    """The run directory and run.json of a training run that can be resumed (else InputError)."""
    run = RunDir.open(path)
    info = run.read_run()
    if info.get("kind") != "train":
        raise InputError(f"{path}: not a training run (kind {info.get('kind')!r})")
    if info.get("status") == "completed":
        raise InputError(f"{path}: run already completed; nothing to resume")
    if info.get("status") == "pruned":  # (a search's pruner stopped it: its end, not an interruption)
        raise InputError(f"{path}: a search pruned this trial; nothing to resume (train its config.yaml "
                         "into a new --run-dir to run it to the end)")
    return run, info


def _resume(run: RunDir, info: dict[str, Any], argv: Optional[list[str]], reporter: Optional[Reporter],
            callbacks: tuple[Callback, ...] = ()) -> dict:
    config = load_config(run.path / "config.yaml")
    setup = build_setup(config)
    last = run.path / "checkpoints" / "last.pt"
    where = "cpu" if distributed.initialised() else setup.device  # (sent to the others from the CPU)
    saved = read_checkpoint(last, setup, where) if last.exists() else None
    saved = distributed.broadcast(saved)  # every rank continues from rank 0's checkpoint
    state = LoopState(**saved["state"]) if saved else LoopState()
    repair_logs(run.path, config, state)
    loop = TrainingRun(setup, run, reporter, state, callbacks)  # opens the CSVs: after they are truncated
    if saved:
        try:
            loop.restore(saved)
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as err:  # torch's load_state_dict
            raise InputError(f"{last}: does not fit the optimizer or schedule of {run.path / 'config.yaml'} "
                             f"({type(err).__name__}: {checkpoint.first_line(err)[:200]})") from None
    # 'running' once the checkpoint is restored: a resume that fails before leaves the status as it was
    run.set_status("running", resumed=[*info.get("resumed", []), {"time": utc_now(), "step": state.step}],
                   resume_argv=argv)
    return _run(loop)


CHECKPOINT_PARTS = ("model", "optimizer", "schedule", "scaler", "state", "rng")


def read_checkpoint(path: Path, setup, where) -> dict[str, Any]:
    """A run's ``last.pt``, read as data only and checked against the run: the parts a
    checkpoint holds, counters the trainer knows, and a model of the config's shapes."""
    saved = checkpoint.load(path, where)
    missing = [k for k in CHECKPOINT_PARTS if not isinstance(saved, dict) or not isinstance(saved.get(k), dict)]
    if missing:
        raise InputError(f"{path}: not a clrctl checkpoint (no {', '.join(missing)})")
    unknown = sorted(set(saved["state"]) - {f.name for f in fields(LoopState)})
    counters = [saved["state"].get(k) for k in ("step", "epoch", "batch")]
    if unknown:
        raise InputError(f"{path}: not a clrctl checkpoint (unknown counters {', '.join(map(str, unknown))[:200]})")
    if not all(type(c) is int and c >= 0 for c in counters):
        raise InputError(f"{path}: not a clrctl checkpoint (step, epoch or batch is not a count)")
    misfit = model_misfit(setup.model.state_dict(), saved["model"])
    if misfit:
        raise InputError(f"{path}: does not fit the model of {path.parents[1] / 'config.yaml'} ({misfit})")
    return saved


def model_misfit(own: dict[str, Any], saved: dict[str, Any]) -> str:
    """How a saved state_dict differs from a model's (missing, unexpected, reshaped keys); "" when it fits."""
    missing = [k for k in own if k not in saved]
    unexpected = [str(k) for k in saved if k not in own]
    reshaped = [k for k in own if k in saved and getattr(saved[k], "shape", None) != own[k].shape]
    parts = [f"{label} {few_keys(keys)}" for label, keys in
             (("missing", missing), ("unexpected", unexpected), ("other shapes for", reshaped)) if keys]
    return "; ".join(parts)


def repair_logs(path: Path, config: Config, state: LoopState) -> None:
    """metrics.csv and epochs.csv cut back to the checkpoint (rows after it are computed again),
    repaired where a killed process or a full disk left them unfinished, refused (InputError)
    where rows the checkpoint counts are lost; a repair is one warning line."""
    metric_columns, epoch_columns = log_columns(config)
    # An epoch counts only once its row is in epochs.csv; a mid-epoch checkpoint (interrupt)
    # keeps the finished epochs and the steps done so far.
    for check_only in (True, False):  # both files checked before either changes
        repaired = [*truncate_csv(path / "metrics.csv", metric_columns, "step", 0, state.step - 1,
                                  check_only=check_only),
                    *truncate_csv(path / "epochs.csv", epoch_columns, "epoch", 1, state.epoch, check_only=check_only)]
    if repaired:
        warnings.warn(ClrctlWarning(f"repaired before resuming {path}: {'; '.join(repaired)}"), stacklevel=2)


def _resume_worker(path: Path, reporter: Optional[Reporter], callbacks: tuple[Callback, ...] = ()) -> tuple[Path, dict]:
    """A non-main rank's resume: rank 0 checks the run and sends its checkpoint (the run's
    config.yaml is read from a file system that all ranks share)."""
    setup = build_setup(load_config(path / "config.yaml"))
    saved = distributed.broadcast(None)
    state = LoopState(**saved["state"]) if saved else LoopState()
    loop = TrainingRun(setup, NullRunDir(path), reporter, state, callbacks)
    if saved:
        loop.restore(saved)
    return path, _run(loop)


def train_seeds(config: Config, seeds: list[int], *, runs_root: str | Path = "runs",
                run_dir: Optional[str | Path] = None, argv: Optional[list[str]] = None,
                reporter_factory=None) -> tuple[Path, list[dict]]:
    """One run per seed under a group directory (``group.json``, ``config.yaml``, ``seed-K/``)."""
    config = resolve_bounds_from(config)
    # Bad input fails here, before the group directory exists; the first seed trains with it.
    built = {seeds[0]: build_setup(config.model_copy(update={"seed": seeds[0]}))}
    group = None
    try:
        with interrupts.deferred():
            group = create_group(runs_root, config.name, seeds, run_dir, config.to_dict())  # claimed
        return group, _train_group(group, config, seeds, argv, reporter_factory, built)
    except KeyboardInterrupt:
        if group is None:
            raise
        raise Interrupted(f"seed group interrupted before its first seed; resume with: "
                          f"clrctl train --resume {group}") from None
    finally:
        if group is not None:
            release(group)


def is_group(path: str | Path) -> bool:
    return (Path(path) / "group.json").is_file()


def resume_group(path: str | Path, *, argv: Optional[list[str]] = None,
                 reporter_factory=None) -> tuple[Path, list[dict]]:
    """Finish an interrupted seed group: resume the seeds that started, start those that never
    did; seeds that completed or diverged are kept as they are."""
    group = Path(path)
    read_json(group / "group.json")  # (a group, not some other directory, before it gets a .lock)
    claim(group)  # refused while another process runs it
    try:
        return group, _resume_group(group, argv, reporter_factory)
    finally:
        release(group)


def _resume_group(group: Path, argv, reporter_factory) -> list[dict]:
    info = read_json(group / "group.json")
    seeds = info.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise InputError(f"{group / 'group.json'}: unreadable (expected a non-empty 'seeds' list)")
    if all(_finished(group / f"seed-{s}") for s in seeds):
        raise InputError(f"{group}: seed group already finished; nothing to resume")
    # Groups written before the group kept its own config.yaml: any seed's, with its seed replaced.
    sources = [group / "config.yaml", *(group / f"seed-{s}" / "config.yaml" for s in seeds)]
    source = next((p for p in sources if p.is_file()), None)
    if source is None:
        raise InputError(f"{group}: no config.yaml in the group nor in any seed; start it again")
    return _train_group(group, load_config(source), seeds, argv, reporter_factory)


def _finished(path: Path) -> bool:
    return (path / "run.json").is_file() and read_json(path / "run.json").get("status") in ("completed", "diverged")


def _train_group(group: Path, config: Config, seeds: list[int], argv, reporter_factory,
                 built: Optional[dict[int, Setup]] = None) -> list[dict]:
    """Each seed in turn; ``built`` holds setups already built, by seed (each is let go once its
    seed has used it: one seed's data and model on the device at a time)."""
    summaries = []
    built = built if built is not None else {}
    for index, seed in enumerate(seeds):
        path = group / f"seed-{seed}"
        reporter = reporter_factory(seed) if reporter_factory else None
        try:
            summaries.append(_train_seed(path, config.model_copy(update={"seed": seed}), argv, reporter,
                                         built.pop(seed, None)))
        except RunFailed as err:  # a diverged seed must not hide the others' results
            summaries.append({"status": "diverged", "seed": seed, "error": str(err)})
        except (Interrupted, KeyboardInterrupt):
            rest = seeds[index + 1:]
            left = f" (not started: seed{'s' if len(rest) > 1 else ''} {', '.join(map(str, rest))})" if rest else ""
            raise Interrupted(f"seed {seed} interrupted{left}; resume with: clrctl train --resume {group}") from None
    return summaries


def _train_seed(path: Path, config: Config, argv, reporter, setup: Optional[Setup] = None) -> dict:
    """One seed of a group: kept if finished, resumed if started, started otherwise (with
    ``setup`` when one was built for it)."""
    if (path / "run.json").is_file() and (path / "config.yaml").is_file():
        status = read_json(path / "run.json").get("status")
        if status in ("completed", "diverged"):
            summary = path / "summary.json"
            return read_json(summary) if summary.is_file() else {"status": status, "seed": config.seed}
        return resume_training(path, argv=argv, reporter=reporter)[1]
    return start_training(config, run_dir=path, argv=argv, reporter=reporter, setup=setup)[1]


def _interrupted(run: RunDir) -> Interrupted:
    """The error for a KeyboardInterrupt outside the loop's handler; marks the run ``interrupted``
    unless it already recorded how it ended."""
    interrupts.stopping()  # handled: more signals must not cut the status short
    status = None
    try:
        status = run.read_run().get("status")
        if status == "running":
            run.set_status("interrupted")
    except (InputError, KeyboardInterrupt):  # unreadable, or one more Ctrl-C: 'running' resumes too
        pass
    if status == "completed":  # after its last file was written
        return Interrupted(f"interrupted after the run completed (its files are complete): {run.path}")
    return Interrupted(f"interrupted; resume with: clrctl train --resume {run.path}")


def _run(run: TrainingRun) -> dict[str, Any]:
    return run.run_all()  # (which draws the plots, before the final status)
