"""``clrctl sweep --search``: an Optuna study whose trials are normal clrctl run directories.

::

    DIR/search.json              what is searched: base config, space, sampler, pruner, metric, storage
    DIR/optuna.journal           the study (default storage: Optuna's journal file, no server)
    DIR/trials/<n>-<values>/     trial n: a normal run directory (run.json, metrics.csv, …)
    DIR/logs/worker-<k>.log      the output of worker k (with --jobs N > 1)
    DIR/sweep.json               the index (kind sweep: ``clrctl compare DIR`` ranks the trials)

Each worker process asks the study for a trial, validates the sampled config (an invalid
one — e.g. base_lr >= max_lr — is told to the study as failed with its reason), trains it
*in this process* through :func:`clrctl.runs.training.start_training`, the lifecycle of
``clrctl train``, with a :class:`~clrctl.sweep.pruning.PruneOnEval` callback, and tells the
study its value (or ``pruned``). In-process because the pruner needs the live trial at each
evaluation; a worker is itself a process, so ``--jobs N`` workers are N processes.

How many: a worker stops once ``--trials`` trials are *finished* (complete, pruned, or failed
by their own sample or run), counting those other workers are running, so a rerun of the
same command continues the study up to ``--trials`` and workers that share a storage
together finish exactly that many. A trial asked in a race past the count is told failed and
marked ``clrctl_surplus`` (it is not counted, nor run). A worker that died (``kill -9``)
leaves its trial running: the next worker of the same host fails it (its pid is recorded and
dead; any storage), and on an RDB storage Optuna's heartbeat fails it after its grace period
whichever host asks next. Either way the trial is enqueued again with the same parameters
and is not counted: no finished trial is run twice, none is lost.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from clrctl.config.schema import apply_override, locate_paths, read_yaml, validate
from clrctl.errors import ConfigError, InputError, Interrupted, RunFailed
from clrctl.runs.rundir import read_json, utc_now, write_json_atomic
from clrctl.sweep import locks
from clrctl.sweep.space import Param, config_values, parse_space, trial_name

SAMPLERS = ("tpe", "random", "cmaes", "grid")
PRUNERS = ("none", "median", "asha", "hyperband")
METRICS = {"val_acc": ("maximize", "final_val_acc"), "val_loss": ("minimize", "final_val_loss")}
JOURNAL = "optuna.journal"
FAILED = "clrctl_failed"  # user attr: why a counted trial failed (its sample or its run)
SURPLUS = "clrctl_surplus"  # user attr: asked past --trials in a race; neither run nor counted
WORKER = "clrctl_worker"  # user attr: "host:pid" of the process running it
OWNED = "clrctl_owned"  # user attr: the trial's number, written after WORKER (the rule for dead workers)
RUN = "clrctl_run"  # user attr: the trial's run directory, relative to DIR
# The spec keys a rerun must repeat (trials, jobs and the storage may change).
_LAYOUT = ("search.json", "sweep.json", JOURNAL, "trials", "logs", "locks")
_SAME = ("config", "overrides", "base", "params", "metric", "search")


def require_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise InputError("--search needs Optuna: pip install 'clrctl[search]' (or pip install optuna)") from None


@dataclass
class Search:
    config: str
    overrides: list[str]
    base: dict[str, Any]  # the config's data, overrides applied, paths located
    params: list[Param]
    search: str  # tpe | random | cmaes | grid
    trials: int
    metric: str  # val_acc | val_loss
    prune: str
    storage: Optional[str]  # None: DIR/optuna.journal
    study: str
    seed: Optional[int] = None  # the sampler's seed (None: Optuna's random one)
    path: Path = field(default=Path("."))
    prune_after: Optional[int] = None  # no pruning before this step (None: the pruner's default)

    @property
    def name(self) -> str:
        return str(self.base.get("name", "run"))

    def values(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """A trial's config values (a ratio multiplied out) from its sampled ones."""
        if not hasattr(self, "_resolved"):
            self._resolved = validate(copy.deepcopy(self.base)).to_dict()
        return config_values(self.params, sampled, self._resolved)

    def spec(self) -> dict[str, Any]:
        return {"config": self.config, "overrides": self.overrides, "base": self.base,
                "params": [p.spec() for p in self.params], "search": self.search, "trials": self.trials,
                "metric": self.metric, "prune": self.prune, "storage": self.storage, "study": self.study,
                "seed": self.seed, "prune_after": self.prune_after}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], path: Path) -> "Search":
        params = [Param.from_spec(p) for p in spec["params"]]
        return cls(spec["config"], spec["overrides"], spec["base"], params, spec["search"], spec["trials"],
                   spec["metric"], spec["prune"], spec["storage"], spec["study"], spec.get("seed"), Path(path),
                   spec.get("prune_after"))


def build_search(config: Path, overrides: list[str], params: list[str], *, search: Optional[str],
                 trials: Optional[int], metric: Optional[str], prune: Optional[str], storage: Optional[str],
                 study: Optional[str], path: Path, prune_after: Optional[int] = None,
                 sampler_seed: Optional[int] = None) -> Search:
    """Read and check everything before any directory exists: the base config must be valid,
    every ``--param`` must parse and name a key of it (else exit 2, nothing written).

    The config's ``sweep: {search: …}`` block gives the same settings from the file; the
    command line wins key by key (``--param KEY`` replaces the block's KEY; a plain override
    ``KEY=V`` pins KEY and drops it from the block's params, as it does from a grid)."""
    from clrctl.sweep.plan import _sweep_block

    data = read_yaml(config)
    block = _sweep_block(data.pop("sweep", None))
    spec = block.search
    if spec is not None and block.grid:
        raise InputError(f"{config}: sweep: has both a grid and a search; keep one")
    if spec is not None:
        search = search or spec.sampler or "tpe"
        trials = trials if trials is not None else spec.trials
        metric, prune = metric or spec.metric, prune or spec.prune
        storage, study = storage or spec.storage, study or spec.study
        prune_after = prune_after if prune_after is not None else spec.prune_after
        sampler_seed = sampler_seed if sampler_seed is not None else spec.sampler_seed
        pinned = {o.partition("=")[0].strip() for o in overrides}
        given = {p.partition("=")[0].strip() for p in params}
        params = [f"{k}={v}" for k, v in spec.params.items() if k not in pinned and k not in given] + list(params)
    metric, prune = metric or "val_acc", prune or "none"
    if search is None or trials is None:
        raise InputError("a search needs --search tpe|random|cmaes|grid and --trials N (and --param KEY=DIST), "
                         "or a sweep: {search: {sampler: …, trials: N, params: {KEY: DIST}}} block")
    if search not in SAMPLERS:
        raise InputError(f"--search {search!r}: expected one of {', '.join(SAMPLERS)}")
    if prune not in PRUNERS:
        raise InputError(f"--prune {prune!r}: expected one of {', '.join(PRUNERS)}")
    if metric not in METRICS:
        raise InputError(f"--metric {metric!r}: expected one of {', '.join(METRICS)} for a search")
    if trials < 1:
        raise InputError(f"--trials {trials}: expected at least 1")
    if sampler_seed is not None and sampler_seed < 0:
        raise InputError(f"--sampler-seed {sampler_seed}: expected 0 or more")
    if prune_after is not None and (prune_after < 1 or prune == "none"):
        raise InputError(f"--prune-after {prune_after}: expected a step >= 1, with --prune median|asha|hyperband")
    for override in overrides:
        apply_override(data, override)
    locate_paths(data, Path(config).parent)
    resolved = validate(copy.deepcopy(data)).to_dict()
    space = parse_space(params, resolved)
    if search == "grid":
        for param in space:
            param.grid_values()  # choice or int only
    return Search(str(config), list(overrides), data, space, search, trials, metric, prune, storage,
                  study or Path(path).resolve().name, sampler_seed, Path(path), prune_after)


def has_search_block(config: Optional[Path]) -> bool:
    """Whether the config's ``sweep:`` block holds a search (then ``clrctl sweep CONFIG`` searches)."""
    if config is None or not Path(config).is_file():
        return False
    data = read_yaml(config)
    block = data.get("sweep") if isinstance(data, dict) else None
    return isinstance(block, dict) and block.get("search") is not None


# ---------------------------------------------------------------------------------------
# The directory and the study


def prepare(search: Search) -> None:
    """Create DIR (or check that the search already there is the same) and write search.json."""
    path = search.path
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a directory")
    spec_path = path / "search.json"
    if spec_path.is_file():
        saved = read_json(spec_path)
        differ = [k for k in _SAME if _plain(saved.get(k)) != _plain(search.spec()[k])]
        if differ:
            raise InputError(f"{path}: holds a search of another {', '.join(differ)}; rerun the same search "
                             "to continue it, or search into a new --run-dir")
        search.storage = search.storage or saved.get("storage")
        search.study = saved.get("study") or search.study
    elif path.is_dir() and any(p.name not in _LAYOUT and not p.name.startswith((".search.json.", ".sweep.json.", JOURNAL))
                               for p in path.iterdir()):
        # (only a search's own entries: another worker may be creating them right now)
        raise InputError(f"{path}: exists and is not a search directory (it holds other files)")
    for sub in ("trials", "logs", "locks"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    write_json_atomic(spec_path, search.spec())


def _plain(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))


def storage(search: Search):
    """The study's storage: the journal file in DIR, or an RDB URL (with Optuna's heartbeat)."""
    import optuna

    if search.storage is None:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        file = str(search.path / JOURNAL)
        return optuna.storages.JournalStorage(JournalFileBackend(file, lock_obj=JournalFileOpenLock(file)))
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # (Optuna >= 4.9)
    callback = ({"heartbeat_stale_trial_callback": retry(max_retry=3)} if retry is not None else
                {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=3)})
    for attempt in range(4):  # workers that start together race to create the schema: the losers retry
        try:
            return optuna.storages.RDBStorage(search.storage, heartbeat_interval=30, grace_period=90, **callback)
        except Exception as err:  # noqa: BLE001 - SQLAlchemy's errors for a bad URL or an unreachable server
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if attempt == 3 or not any(w in first.lower() for w in ("duplicate", "unique", "already exists")):
                raise InputError(f"--storage {search.storage!r}: cannot open it ({first[:200]})") from None
            time.sleep(0.5 + attempt)


def sampler(search: Search):
    """The sampler, seeded with ``--sampler-seed`` (+ K in worker K of ``--jobs``, so that
    workers do not draw the same values)."""
    import optuna

    seed = None if search.seed is None else search.seed + int(os.environ.get("CLRCTL_SEARCH_WORKER", "0"))

    if search.search == "grid":
        class Grid(optuna.samplers.GridSampler):
            def after_trial(self, *args, **kwargs) -> None:
                """(GridSampler stops the study once the grid is done, which only works inside
                study.optimize; here the workers count the trials, capped at the grid's size.)"""

        return Grid({p.key: p.grid_values() for p in search.params}, seed=seed)
    if search.search == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.search == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed)


def pruner(search: Search):
    """median: a trial below the median of earlier ones at the same step (after 2 finished);
    asha: successive halving; hyperband: Hyperband over it. ``prune_after`` N: no pruning
    before step N (median's warm-up steps; the first rung of asha and hyperband)."""
    import optuna

    after = search.prune_after
    return {"none": lambda: optuna.pruners.NopPruner(),
            "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=after or 0),
            "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=after or "auto"),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=after or 1)}[search.prune]()


def quiet_optuna() -> None:
    """Optuna's notes on its experimental heartbeat (used here as study.optimize uses it) and
    its INFO lines are not the user's business."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def open_study(search: Search):
    import optuna

    quiet_optuna()
    return optuna.create_study(study_name=search.study, storage=storage(search), sampler=sampler(search),
                               pruner=pruner(search), direction=METRICS[search.metric][0], load_if_exists=True)


def counted(trial) -> bool:
    """A finished trial that counts toward --trials."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and FAILED in trial.user_attrs and SURPLUS not in trial.user_attrs


def progress(study) -> tuple[int, int]:
    """(counted finished trials, running ones)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    return sum(map(counted, trials)), sum(t.state == TrialState.RUNNING for t in trials)


# ---------------------------------------------------------------------------------------
# A worker


class Events:
    """What a worker tells its caller (the CLI prints it). Silent by default."""

    def trial(self, number: int, name: str, state: str, value: Optional[float], message: str,
              elapsed: float) -> None: ...


def work(search: Search, events: Optional[Events] = None, argv: Optional[list[str]] = None) -> int:
    """Run trials until --trials are finished (counting the other workers'); returns how many
    this worker ran. Ctrl-C: the running trial is interrupted (enqueued again), Interrupted raised."""
    events = events or Events()
    study = open_study(search)
    trials = search.trials if search.search != "grid" else min(search.trials, grid_size(search))
    ran = 0
    while True:
        fail_orphans(study)
        done, running = progress(study)
        if done + running >= trials:
            return ran
        trial = study.ask({p.key: p.distribution() for p in search.params})
        _own(trial)
        if _past_budget(study, trial.number, trials):
            trial.set_user_attr(SURPLUS, True)
            study.tell(trial, state=_state("FAIL"))
            return ran
        ran += 1
        _run_trial(search, study, trial, events, argv)


def grid_size(search: Search) -> int:
    size = 1
    for param in search.params:
        size *= len(param.grid_values())
    return size


def _past_budget(study, number: int, trials: int) -> bool:
    """Whether the trials counted or running before ``number`` already make --trials."""
    from optuna.trial import TrialState

    before = [t for t in study.get_trials(deepcopy=False) if t.number != number and SURPLUS not in t.user_attrs]
    return sum(counted(t) or (t.state == TrialState.RUNNING and t.number < number) for t in before) >= trials


def _state(name: str):
    from optuna.trial import TrialState

    return getattr(TrialState, name)


def _run_trial(search: Search, study, trial, events: Events, argv: Optional[list[str]]) -> None:
    from optuna.storages._heartbeat import get_heartbeat_thread  # (what study.optimize uses)

    from clrctl.runs.bounds import resolve_bounds_from
    from clrctl.runs.training import start_training
    from clrctl.sweep.pruning import PruneOnEval

    t0 = time.monotonic()
    values = search.values(trial.params)
    name = trial_name(trial.number, values)
    trial.set_user_attr(RUN, f"trials/{name}")
    data = copy.deepcopy(search.base)
    try:
        for key, value in values.items():
            set_value(data, key, value)
        config = resolve_bounds_from(validate(data))
    except ConfigError as err:  # an invalid sample: failed, with its reason; the study goes on
        _fail(study, trial, f"invalid sample: {err}")
        events.trial(trial.number, name, "failed", None, f"invalid sample: {err}", time.monotonic() - t0)
        return
    watcher = PruneOnEval(trial, search.metric)
    try:
        with get_heartbeat_thread(trial._trial_id, study._storage):
            _, summary = start_training(config, run_dir=search.path / "trials" / name, argv=argv,
                                        callbacks=(watcher,))
    except (Interrupted, KeyboardInterrupt):
        study.tell(trial, state=_state("FAIL"))  # not counted; run again with the same values
        study.enqueue_trial(dict(trial.params), user_attrs={"clrctl_retry_of": trial.number})
        raise Interrupted(f"search interrupted in trial {trial.number}; run the same command again to continue "
                          f"({search.path})") from None
    except (RunFailed, InputError, OSError) as err:  # diverged, a file it could not write, bad data
        _fail(study, trial, str(err))
        events.trial(trial.number, name, "failed", None, str(err), time.monotonic() - t0)
        return
    if summary.get("status") == "pruned":
        study.tell(trial, state=_state("PRUNED"))
        events.trial(trial.number, name, "pruned", watcher.last, f"at step {summary.get('steps')}",
                     time.monotonic() - t0)
        return
    value = summary.get(METRICS[search.metric][1])
    if value is None:
        _fail(study, trial, f"the run recorded no {METRICS[search.metric][1]}")
        events.trial(trial.number, name, "failed", None, "no value", time.monotonic() - t0)
        return
    study.tell(trial, float(value))
    events.trial(trial.number, name, "completed", float(value), "", time.monotonic() - t0)


def _fail(study, trial, reason: str) -> None:
    trial.set_user_attr(FAILED, reason[:500])
    study.tell(trial, state=_state("FAIL"))


def set_value(data: dict[str, Any], key: str, value: Any) -> None:
    """``data[key] = value`` for a dotted key, list indices included (as an override does)."""
    from clrctl.sweep.space import dump

    apply_override(data, f"{key}={dump(value)}")


def _own(trial) -> None:
    """Record who runs ``trial``: host:pid, then the trial's number (a retry Optuna's heartbeat
    enqueued carries its dead predecessor's attributes until both are written)."""
    trial.set_user_attr(WORKER, f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr(OWNED, trial.number)


def fail_orphans(study) -> None:
    """A running trial whose worker is a dead process of this host is failed (not counted) and
    enqueued again with its parameters — on every storage: a rerun on the machine where a worker
    was killed need not wait for a heartbeat. A trial of another host (RDB storages) is failed by
    Optuna's heartbeat once its worker has been silent for the grace period
    (``fail_stale_trials``, as ``study.optimize`` does; its callback enqueues the retry)."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(OWNED) != trial.number:
            continue  # (just asked: its worker is writing its attributes)
        worker_host, _, pid = str(trial.user_attrs.get(WORKER, "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or locks.pid_alive(int(pid)):
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:  # another worker got there first: it enqueues the retry
            continue
        study.enqueue_trial(dict(trial.params), user_attrs={"clrctl_retry_of": trial.number})


# ---------------------------------------------------------------------------------------
# Several workers, and the index


def run_workers(search: Search, jobs: int, quiet: bool) -> int:
    """``--jobs N`` worker processes (``python -m clrctl.sweep.search DIR``), output in
    DIR/logs/worker-K.log; returns the worst exit code (130 when interrupted)."""
    from clrctl.sweep.runner import cpu_count, visible_gpus, worker_env

    cores = cpu_count()
    device = str(search.base.get("device", "auto"))
    gpus = visible_gpus([device])
    procs = []
    for slot in range(jobs):
        log = open(search.path / "logs" / f"worker-{slot}.log", "a", encoding="utf-8")
        log.write(f"# {utc_now()} worker {slot}\n")
        log.flush()
        procs.append((subprocess.Popen([sys.executable, "-m", "clrctl.sweep.search", str(search.path)],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       env={**worker_env(slot, jobs, cores, gpus, device),
                                            "CLRCTL_SEARCH_WORKER": str(slot)}, start_new_session=True),
                      log))
    try:
        codes = [proc.wait() for proc, _ in procs]
    except KeyboardInterrupt:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        codes = [proc.wait() for proc, _ in procs]
        codes.append(130)
    for _, log in procs:
        log.close()
    return 130 if 130 in codes else max(codes)


def write_index(search: Search, argv: list[str]) -> dict[str, Any]:
    """sweep.json: one point per trial that has a run directory (kind sweep, so ``clrctl
    compare DIR`` ranks them), the study's counts and its best trial."""
    study = open_study(search)
    points, counts = [], {}
    best = None
    for trial in study.get_trials(deepcopy=False):
        if SURPLUS in trial.user_attrs:
            continue
        state = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
                 "WAITING": "pending"}.get(trial.state.name, trial.state.name.lower())
        if state == "failed" and FAILED not in trial.user_attrs:
            state = "retried"  # a killed or interrupted trial, enqueued again
        counts[state] = counts.get(state, 0) + 1
        rel = trial.user_attrs.get(RUN)
        values = search.values(trial.params)
        entry = {"name": Path(rel).name if rel else str(trial.number), "trial": trial.number, "overrides": values,
                 "included": False, "seeds": [search.base.get("seed", 0)], "status": state, "path": rel,
                 "value": trial.value if state == "completed" else None,
                 "last_value": _last_report(trial) if state == "pruned" else None,
                 "reason": trial.user_attrs.get(FAILED),
                 "runs": [{"seed": search.base.get("seed", 0), "path": rel, "status": state}] if rel else []}
        if rel and (search.path / rel / "run.json").is_file():
            points.append(entry)
        if state == "completed" and (best is None or _better(search.metric, trial.value, best["value"])):
            best = {"trial": trial.number, "value": trial.value, "path": rel, "overrides": values,
                    "config": f"{rel}/config.yaml" if rel else None}
    previous = read_json(search.path / "sweep.json") if (search.path / "sweep.json").is_file() else {}
    index = {"schema_version": 1, "kind": "sweep", "name": search.name, "config": search.config,
             "overrides": search.overrides, "grid": {}, "include": [], "seeds": None, "argv": argv,
             "search": {"sampler": search.search, "trials": search.trials, "metric": search.metric,
                        "prune": search.prune, "prune_after": search.prune_after,
                        "sampler_seed": search.seed, "storage": search.storage or JOURNAL, "study": search.study,
                        "params": [p.spec() for p in search.params]},
             "best": best, "created": previous.get("created") or utc_now(), "updated": utc_now(),
             "counts": counts, "points": points}
    write_json_atomic(search.path / "sweep.json", index)
    return index


def _last_report(trial) -> Optional[float]:
    """A pruned trial's last reported value (the evaluation it was pruned at)."""
    reported = trial.intermediate_values
    return float(reported[max(reported)]) if reported else None


def _better(metric: str, value: float, than: float) -> bool:
    return value > than if METRICS[metric][0] == "maximize" else value < than


def _worker_main(argv: list[str]) -> int:
    """``python -m clrctl.sweep.search DIR``: one worker of ``--jobs N`` (reads DIR/search.json)."""
    path = Path(argv[0])
    search = Search.from_spec(read_json(path / "search.json"), path)

    class Lines(Events):
        def trial(self, number, name, state, value, message, elapsed):
            print(f"trial {number} {state} {name}" + (f" {value:.4g}" if value is not None else "")
                  + (f" — {message}" if message else "") + f" ({elapsed:.1f} s)", flush=True)

    try:
        work(search, Lines(), ["clrctl", "sweep", "(worker)", str(path)])
    except Interrupted as err:
        print(f"error: {err}", flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
