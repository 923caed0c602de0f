"""``clrctl train CONFIG --seeds S --vectorize``: a seed group trained as one stacked model.

The group directory is the ordinary one (``group.json`` — with ``vectorized: true`` — the
group's ``config.yaml``, ``seed-K/`` run directories with every usual file; ``run.json``
records ``vectorized: true``), so ``compare`` and every other command read it unchanged.
Each seed is a :class:`SeedRun`: a :class:`~clrctl.runs.lifecycle.TrainingRun` whose loop
is a view of :class:`~clrctl.engine.seedloop.StackedLoop` — the same callbacks write its
files, and it ends (``completed``, ``diverged``, ``interrupted``, ``failed``) as a run alone.

What cannot be vectorised (:func:`clrctl.engine.stack.refusal`, BatchNorm, a model that
``torch.func`` cannot run) is refused before the group directory exists, as one line.
``clrctl train --resume GROUP_DIR`` continues every seed that did not finish from its own
``last.pt``, stacked again (seeds whose checkpoints are at different steps — a ``kill -9``
between two writes — are stacked by step, one stack after another).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from clrctl import interrupts
from clrctl.config.schema import Config, load_config
from clrctl.engine.loop import LoopState
from clrctl.engine.seedloop import SeedView, StackedLoop
from clrctl.engine.setup import Setup, build_setup
from clrctl.engine.stack import ModelStack, model_refusal, probe, refusal, setup_refusal
from clrctl.engine.strategy import Strategy
from clrctl.errors import ConfigError, InputError, Interrupted, RunFailed
from clrctl.runs.bounds import resolve_bounds_from
from clrctl.runs.lifecycle import TrainingRun, open_run
from clrctl.runs.rundir import claim, create_group, read_json, release, run_info, utc_now
from clrctl.runs.training import model_record, open_resumable, read_checkpoint, repair_logs
from clrctl.track.reporter import Reporter


class SeedRun(TrainingRun):
    """One seed of a vectorised group: a training run whose loop the group's stack steps."""

    loop_class = SeedView


def check_config(config: Config) -> None:
    """What ``--vectorize`` refuses in the config itself: one line, exit 2."""
    why = refusal(config)
    if why:
        raise ConfigError(why)


def check_setups(setups: list[Setup]) -> None:
    """BatchNorm, and a model ``torch.func`` cannot run (a stacked forward and backward of a
    few samples of each seed): one line, before any directory exists."""
    first = setups[0]
    why = model_refusal(first.model, first.config.model.name) or setup_refusal(first)
    if why:
        raise ConfigError(why)
    stack = ModelStack([s.model for s in setups])
    samples = [next(iter(_head(s).batches(0))) for s in setups]
    with torch.random.fork_rng(devices=[first.device] if first.device.type == "cuda" else []):
        probe(stack, first.loss_fn, torch.stack([x for x, _ in samples]), torch.stack([y for _, y in samples]),
              first.config.model.name)


def _head(setup: Setup):
    source = setup.data.train.head(4)
    if hasattr(source, "num_workers"):
        source.num_workers = 0
    return source


def train_seeds_vectorized(config: Config, seeds: list[int], *, runs_root: str | Path = "runs",
                           run_dir: Optional[str | Path] = None, argv: Optional[list[str]] = None,
                           reporter: Optional[Reporter] = None) -> tuple[Path, list[dict]]:
    """The seeds of ``seeds`` as one stacked model under a new group directory; returns the
    group and each seed's summary (a diverged seed's: its status and error)."""
    config = resolve_bounds_from(config)
    check_config(config)
    setups = [build_setup(config.model_copy(update={"seed": s})) for s in seeds]
    check_setups(setups)
    group = None
    runs: list[SeedRun] = []
    try:
        with interrupts.deferred():
            group = create_group(runs_root, config.name, seeds, run_dir, config.to_dict(), extra={"vectorized": True})
        for n, (seed, setup) in enumerate(zip(seeds, setups)):
            runs.append(_new_seed_run(group / f"seed-{seed}", setup, argv, reporter if n == 0 else None))
        return group, GroupRun(runs, group).run_all()
    except KeyboardInterrupt:
        if group is None:
            raise
        for run in runs:
            _mark_interrupted(run)
        raise Interrupted(f"seed group interrupted as it started; resume with: clrctl train --resume {group}") from None
    finally:
        for run in runs:
            release(run.run.path)
        if group is not None:
            release(group)


def _new_seed_run(path: Path, setup: Setup, argv, reporter: Optional[Reporter]) -> SeedRun:
    info = {**run_info("train", setup.seed, str(setup.device), argv), **model_record(setup),
            "train_samples": setup.data.train.num_samples, "vectorized": True}
    run = open_run(path.parent, setup.config.name, path, info, setup.config.to_dict())
    return SeedRun(setup, run, reporter, strategy=Strategy())


def _mark_interrupted(run: SeedRun) -> None:
    try:
        if run.run.status() == "running":
            run.run.set_status("interrupted")
    except Exception:  # noqa: BLE001 - 'running' resumes as well
        pass


def is_vectorized_group(path: str | Path) -> bool:
    try:
        return bool(read_json(Path(path) / "group.json").get("vectorized"))
    except (InputError, OSError):
        return False


def resume_group_vectorized(path: str | Path, *, argv: Optional[list[str]] = None,
                            reporter: Optional[Reporter] = None) -> tuple[Path, list[dict]]:
    """Continue a vectorised group: seeds that completed or diverged are kept, the others
    continue from their ``last.pt`` (or start) stacked again."""
    group = Path(path)
    info = read_json(group / "group.json")
    seeds = info.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise InputError(f"{group / 'group.json'}: unreadable (expected a non-empty 'seeds' list)")
    claim(group)
    runs: list[SeedRun] = []
    try:
        config = load_config(group / "config.yaml")
        summaries: dict[int, dict] = {}
        saved: dict[int, Optional[dict]] = {}
        for seed in seeds:
            seed_dir = group / f"seed-{seed}"
            status = read_json(seed_dir / "run.json").get("status") if (seed_dir / "run.json").is_file() else None
            if status in ("completed", "diverged"):
                summary = seed_dir / "summary.json"
                summaries[seed] = read_json(summary) if summary.is_file() else {"status": status, "seed": seed}
                continue
            first = reporter if not runs else None
            if status is None or not (seed_dir / "config.yaml").is_file():
                runs.append(_new_seed_run(seed_dir, build_setup(config.model_copy(update={"seed": seed})), argv,
                                          first))
                saved[seed] = None
                continue
            run_dir, run_info_ = open_resumable(seed_dir)
            claim(run_dir.path)
            try:
                setup = build_setup(load_config(seed_dir / "config.yaml"))
                last = seed_dir / "checkpoints" / "last.pt"
                saved[seed] = read_checkpoint(last, setup, setup.device) if last.exists() else None
                state = LoopState(**saved[seed]["state"]) if saved[seed] else LoopState()
                repair_logs(seed_dir, setup.config, state)
                run = SeedRun(setup, run_dir, first, state, strategy=Strategy())
            except BaseException:
                release(run_dir.path)
                raise
            runs.append(run)
            if saved[seed]:
                try:
                    run.restore(saved[seed])
                except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as err:
                    raise InputError(f"{last}: does not fit the optimizer or schedule of {seed_dir / 'config.yaml'} "
                                     f"({type(err).__name__})") from None
            run_dir.set_status("running", resumed=[*run_info_.get("resumed", []),
                                                   {"time": utc_now(), "step": state.step}], resume_argv=argv)
        if not runs:
            raise InputError(f"{group}: seed group already finished; nothing to resume")
        # seeds stacked by the step their checkpoints are at (one stack, unless a kill fell between writes)
        by_step: dict[int, list[SeedRun]] = {}
        for run in runs:
            by_step.setdefault(run.state.step, []).append(run)
        interrupted: Optional[Interrupted] = None
        for step in sorted(by_step):
            part = GroupRun(by_step[step], group, resumed=True)
            try:
                for run, summary in zip(by_step[step], part.run_all()):
                    summaries[run.setup.seed] = summary
            except Interrupted as err:
                interrupted = err
                break
        if interrupted is not None:
            raise interrupted
        return group, [summaries[s] for s in seeds if s in summaries]
    finally:
        for run in runs:
            release(run.run.path)
        release(group)


class GroupRun:
    """The seed runs ``runs`` (at the same step) trained through one :class:`StackedLoop`."""

    def __init__(self, runs: list[SeedRun], group: Path, resumed: bool = False):
        self.runs, self.group = list(runs), group
        self.by_view = {id(r.loop): r for r in runs}
        self.loop = StackedLoop([r.loop for r in runs], self._ended)
        if resumed:
            self.loop.restore_stack()
        self.summaries: dict[int, dict] = {}
        self.interrupted = False
        self._signal: Optional[str] = None
        self._finishing = False

    def _ended(self, view: SeedView, err: BaseException) -> None:
        """A seed's loop ended at a sync (diverged, stopped): its run ends as alone."""
        run = self.by_view[id(view)]
        self.loop.sync_view(view)
        self._end(run, err)

    def _end(self, run: SeedRun, err: BaseException) -> None:
        seed = run.setup.seed
        try:
            self.summaries[seed] = run.end(err)
        except RunFailed as failed:
            self.summaries[seed] = {"status": run.run.status(), "seed": seed, "error": str(failed)}
        except Interrupted:
            self.interrupted = True

    def run_all(self) -> list[dict]:
        """Every seed to its end; raises Interrupted (exit 130) once each seed's files are written."""
        loop = self.loop
        with interrupts.handled_by(self._handler):
            try:
                loop.run()
            except BaseException as err:  # noqa: BLE001 - each seed still running ends on it
                self._finishing = True
                # a second signal ("stop now", mid-step: no checkpoint), or an error outside
                # the syncs (unreadable data, a full disk): every seed still running ends on it
                first: Optional[BaseException] = None
                for view in list(loop.views):
                    try:
                        self._end(self.by_view[id(view)], err)
                    except BaseException as failure:  # noqa: BLE001 - the others end too
                        first = first or failure
                if not isinstance(err, KeyboardInterrupt):
                    raise (first or err) from err
            else:
                self._finishing = True
                self._complete([self.by_view[id(v)] for v in loop.views])
        if self.interrupted:
            raise Interrupted(f"seed group interrupted at step {loop.state.step}; resume with: "
                              f"clrctl train --resume {self.group}")
        if self._signal:
            raise Interrupted(f"interrupted as the seed group completed (its files are complete): {self.group}")
        return [self.summaries[r.setup.seed] for r in self.runs]

    def _complete(self, runs: list[SeedRun]) -> None:
        """The seeds that trained to the end: each one's files, then all their plots at once
        (one process per core: drawing is most of a small group's end), then each status."""
        finished = []
        for run in runs:
            self.loop.sync_view(run.loop)
            finished.append((run, *run.finish_files("completed")))
        draw_plots([(run, problems) for run, _, problems in finished])
        for run, summary, problems in finished:
            try:
                self.summaries[run.setup.seed] = run.finish_status("completed", summary, problems)
            except RunFailed as failed:
                self.summaries[run.setup.seed] = {"status": "failed", "seed": run.setup.seed, "error": str(failed)}

    def _handler(self, signum, _frame):
        """As one run's: the first signal stops every seed after the step, a second aborts it."""
        import signal

        interrupts.stopping()
        finishing = self._finishing or self.loop.stopping
        if self._signal and not finishing:
            self._finishing = True
            raise KeyboardInterrupt
        self._signal = self._signal or signal.Signals(signum).name
        if not finishing:
            self.loop.request_stop(self._signal)


_DRAW = TrainingRun._plots  # (a test that replaces TrainingRun._plots keeps its replacement)


def draw_plots(runs: list[tuple[SeedRun, list[Exception]]]) -> None:
    """Each run's plots, an error added to its ``problems``: in parallel processes (forked:
    nothing to import again) when there are several runs and several cores, else in turn."""
    import multiprocessing
    import os

    workers = min(len(runs), os.cpu_count() or 1)
    if workers < 2 or TrainingRun._plots is not _DRAW or "fork" not in multiprocessing.get_all_start_methods():
        for run, problems in runs:
            try:
                run._plots()
            except Exception as err:  # noqa: BLE001 - the run ends 'failed', naming it
                problems.append(err)
        return
    from concurrent.futures import ProcessPoolExecutor

    from clrctl.runs.plots import render_plots

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [(pool.submit(render_plots, run.run.path, run.setup.config, run.setup.data.train.num_samples),
                    problems) for run, problems in runs]
        for future, problems in futures:
            try:
                future.result()
            except Exception as err:  # noqa: BLE001 - the run ends 'failed', naming it
                problems.append(err)
