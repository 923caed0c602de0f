"""clrctl sweep --search: real Optuna studies of tiny trials, no mocks. The journal file study
and its rerun, bad --param refused before anything runs, an invalid sample failed with its
reason, pruning that stops a hopeless trial (status ``pruned``, files complete), and two
concurrent workers on a PostgreSQL server this test starts that finish exactly --trials."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli

optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install 'clrctl[search]')")

TINY = {
    "name": "tiny", "seed": 0, "device": "cpu",
    "dataset": {"name": "digits", "batch_size": 64},
    "model": {"name": "mlp", "hidden": [32]},
    "optimizer": {"name": "sgd", "momentum": 0.9},
    "policy": {"name": "fixed", "lr": 0.05},
    "train": {"epochs": 1, "eval_every": 5},
}


def write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump({**TINY, **sections}, sort_keys=False))
    return path


def index(path: Path) -> dict:
    return json.loads((path / "sweep.json").read_text())


def statuses(path: Path) -> list[str]:
    return sorted(json.loads((d / "run.json").read_text())["status"] for d in (path / "trials").iterdir())


def test_journal_study_then_a_rerun_continues_to_trials(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml")
    out = tmp_path / "search"
    args = ["sweep", config, "--search", "tpe", "--param", "policy.lr=loguniform(0.01, 0.2)",
            "--param", "model.hidden.0=choice(16, 32)", "--run-dir", out, "-q"]
    assert run_cli(*args, "--trials", "2") == 0
    assert (out / "optuna.journal").is_file() and statuses(out) == ["completed"] * 2
    first = {d.name: (d / "run.json").stat().st_mtime_ns for d in (out / "trials").iterdir()}
    trial = next((out / "trials").iterdir())
    assert {"run.json", "config.yaml", "metrics.csv", "summary.json"} <= {p.name for p in trial.iterdir()}
    assert run_cli(*args, "--trials", "3") == 0  # continues: one more, the first two untouched
    assert statuses(out) == ["completed"] * 3
    assert all((out / "trials" / n / "run.json").stat().st_mtime_ns == t for n, t in first.items())
    idx = index(out)
    assert idx["counts"] == {"completed": 3} and idx["best"]["value"] == max(p["value"] for p in idx["points"])
    saved = yaml.safe_load((out / idx["best"]["config"]).read_text())
    assert saved["policy"]["lr"] == idx["best"]["overrides"]["policy.lr"]
    assert saved["model"]["hidden"] == [idx["best"]["overrides"]["model.hidden.0"]]  # a list element
    assert run_cli(*args, "--trials", "3") == 0 and statuses(out) == ["completed"] * 3  # done: nothing runs
    capsys.readouterr()
    assert run_cli("compare", out) == 0
    assert "3 points ranked" in capsys.readouterr().out.replace("\n", " ")


@pytest.mark.parametrize("param, says", [
    ("policy.lrr=uniform(0.1, 0.2)", "unknown key policy.lrr"),
    ("model.hidden.3=choice(8, 16)", "'3' is not an index of model.hidden"),
    ("policy.lr=uniform(0.2, 0.1)", "empty range"),
    ("policy.lr=gauss(0.1, 0.2)", "expected one of loguniform"),
    ("policy.lr=loguniform(0, 1)", "low > 0"),
    ("policy.lr=int(1.5, 3)", "int bounds must be integers"),
    ("policy.lr=choice()", "choice needs at least one value"),
    ("policy.lr", "expected KEY=DIST"),
])
def test_a_bad_param_exits_2_before_anything_runs(tmp_path, capsys, param, says):
    out = tmp_path / "search"
    code = run_cli("sweep", write_config(tmp_path / "c.yaml"), "--search", "random", "--trials", "2",
                   "--param", param, "--run-dir", out)
    err = capsys.readouterr().err.strip()
    assert code == 2 and says in err and len(err.splitlines()) == 1 and not out.exists()


def test_an_invalid_sample_fails_with_its_reason_and_the_study_goes_on(tmp_path):
    config = write_config(tmp_path / "c.yaml", policy={"name": "triangular", "bounds": [0.02, 0.1], "stepsize": 7})
    out = tmp_path / "search"
    assert run_cli("sweep", config, "--search", "grid", "--trials", "2", "--param", "policy.bounds.0=choice(0.01, 0.5)",
                   "--run-dir", out, "-q") == 0
    idx = index(out)
    assert idx["counts"] == {"completed": 1, "failed": 1} and len(idx["points"]) == 1  # no run dir for the bad one
    study = optuna.load_study(study_name="search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal"))))
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].params == {"policy.bounds.0": "0.5"}
    assert "invalid sample" in failed[0].user_attrs["clrctl_failed"] and "bounds" in failed[0].user_attrs["clrctl_failed"]


@pytest.mark.plots  # (it reads the plots: conftest skips them elsewhere)
def test_pruning_stops_a_hopeless_trial_with_its_files_complete(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'study.db'}"  # an RDB storage too; the trials' order is ours
    study = optuna.create_study(study_name="p", storage=db, direction="maximize")
    for lr in ("0.05", "0.1", "0.08", "1.0e-06"):  # (the choices' YAML text)  # two good trials first (the median pruner's start), then a hopeless one
        study.enqueue_trial({"policy.lr": lr})
    out = tmp_path / "search"
    config = write_config(tmp_path / "c.yaml", train={"epochs": 2, "eval_every": 5})
    args = ["sweep", config, "--search", "random", "--param", "policy.lr=choice(0.05, 0.1, 0.08, 0.000001)",
            "--storage", db, "--study", "p", "--run-dir", out, "-q"]
    assert run_cli(*args, "--trials", "3") == 0  # three to compare with (unpruned), then the hopeless one
    assert run_cli(*args, "--trials", "4", "--prune", "median") == 0
    states = [t.state.name for t in optuna.load_study(study_name="p", storage=db).trials]
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    pruned = next(d for d in (out / "trials").iterdir() if d.name.startswith("3-"))
    run = json.loads((pruned / "run.json").read_text())
    summary = json.loads((pruned / "summary.json").read_text())
    assert run["status"] == "pruned" and summary["status"] == "pruned" and summary["stop_reason"] == "pruned"
    assert summary["steps"] < summary["planned_steps"]
    assert (pruned / "checkpoints" / "last.pt").is_file() and list(pruned.glob("plots/*.png"))
    assert index(out)["counts"] == {"completed": 3, "pruned": 1}
    # compare ranks the completed ones, marks the pruned one; --plot draws the history
    capsys.readouterr()
    assert run_cli("compare", out, "--format", "json", "--plot", tmp_path / "search.png") == 0
    report = json.loads(capsys.readouterr().out)
    ranked = {row["name"][0]: row for row in report["points"]}
    assert ranked["3"]["rank"] is None and ranked["3"]["statuses"] == {"pruned": 1} and ranked["0"]["rank"] is not None
    history = report["search"]["trials"]
    assert [t["status"] for t in history] == ["completed"] * 3 + ["pruned"]
    reported = optuna.load_study(study_name="p", storage=db).trials[3].intermediate_values
    assert history[3]["value"] == reported[max(reported)]  # the value it was pruned at
    assert report["search"]["most_important"] == "policy.lr" and report["search"]["best"]["trial"] in (0, 1, 2)
    assert (tmp_path / "search.png").stat().st_size > 10_000
    from clrctl.plots.sweep import sweep_figure

    left, right = sweep_figure(report).axes
    assert left.get_xlabel() == "trial" and right.get_xlabel() == "policy.lr"
    assert sum(len(c.get_offsets()) for c in left.collections) == 4  # 3 completed + 1 pruned
    before = (pruned / "metrics.csv").read_bytes()
    capsys.readouterr()
    assert run_cli("train", "--resume", pruned) == 2  # pruned is an end: one line, nothing touched
    err = capsys.readouterr().err.strip()
    assert "a search pruned this trial; nothing to resume" in err and len(err.splitlines()) == 1
    assert (pruned / "metrics.csv").read_bytes() == before and json.loads((pruned / "run.json").read_text()) == run


# ---------------------------------------------------------------------------------------
# A worker killed with kill -9 mid-trial: its trial is failed, retried, never counted twice

TESTS = Path(__file__).resolve().parent


def spawn_sweep(*args, env=None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "clrctl", "sweep", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_trial(out: Path, prefix: str, rows: int, proc, timeout: float = 60.0) -> Path:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in (out / "trials").glob(f"{prefix}-*") if (out / "trials").is_dir() else ():
            metrics = run / "metrics.csv"
            if metrics.is_file() and sum(1 for _ in open(metrics)) - 1 >= rows:
                return run
        if proc.poll() is not None:
            pytest.fail(f"the worker ended before trial {prefix} had {rows} rows: {proc.stdout.read()}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for trial {prefix}")


def kill_a_worker_mid_trial_then_rerun(tmp_path, hold, extra: list[str], load) -> None:
    import signal

    config = write_config(tmp_path / "c.yaml", model={"name": "slow_model:build", "args": {"delay_s": 0.0}},
                          train={"epochs": 1, "eval_every": 5, "log_every": 5})
    out = tmp_path / "search"
    args = [config, "--search", "random", "--param", "policy.lr=choice(0.03, 0.05, 0.1)", *extra,
            "--run-dir", out, "-q"]
    assert run_cli(*["sweep", *args, "--trials", "1"]) == 0  # (in-process: trial 0 finishes)
    finished = {d.name: (d / "run.json").read_bytes() for d in (out / "trials").iterdir()}
    held = hold(12)  # trial 1 waits after 12 forwards (the probe batch counts) until the kill
    worker = spawn_sweep(*args, "--trials", "3", env=held.env)
    killed = wait_for_trial(out, "1", 5, worker)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    held.release()
    assert json.loads((killed / "run.json").read_text())["status"] == "running"  # as kill -9 leaves it

    rerun = spawn_sweep(*args, "--trials", "3")
    assert rerun.wait(timeout=180) == 0, rerun.stdout.read()
    trials = sorted(load().trials, key=lambda t: t.number)
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"], states
    assert "clrctl_failed" not in trials[1].user_attrs  # not a failure of its own: not counted
    assert trials[2].params == trials[1].params and trials[2].user_attrs["clrctl_retry_of"] == 1
    for name, before in finished.items():  # the finished trial was not run again
        assert (out / "trials" / name / "run.json").read_bytes() == before
    assert sorted(d.name.split("-")[0] for d in (out / "trials").iterdir()) == ["0", "1", "2", "3"]
    idx = index(out)
    assert idx["counts"] == {"completed": 3, "retried": 1} and len({p["path"] for p in idx["points"]}) == 4


def test_a_worker_killed_mid_trial_on_the_journal_is_retried_by_a_rerun(tmp_path, hold):
    out = tmp_path / "search"
    kill_a_worker_mid_trial_then_rerun(tmp_path, hold, [], lambda: optuna.load_study(
        study_name="search", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal")))))


# ---------------------------------------------------------------------------------------
# PostgreSQL: a real server started here, two workers sharing it

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(*cmd: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


@pytest.fixture
def postgres():
    """A PostgreSQL server in a temporary directory, on a Unix socket only; its URL."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)")
    if not (PG_BIN / "initdb").is_file() or not (PG_BIN / "pg_ctl").is_file():
        pytest.skip(f"PostgreSQL's initdb / pg_ctl are not in {PG_BIN} (apt-get install postgresql)")
    if os.geteuid() == 0 and (shutil.which("runuser") is None or subprocess.run(
            ["id", "postgres"], capture_output=True).returncode != 0):
        pytest.skip("running as root, and there is no postgres user (or runuser) to run the server as")
    root = Path(tempfile.mkdtemp(prefix="clrctl-pg-", dir="/tmp"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    run = lambda *cmd: subprocess.run(_as_postgres(*cmd), capture_output=True, text=True, timeout=120)  # noqa: E731
    try:
        made = run(str(PG_BIN / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres")
        if made.returncode:
            pytest.skip(f"initdb failed: {made.stderr.strip()[-200:]}")
        started = run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                      f"-k {sock} -c listen_addresses='' -c fsync=off", "start")
        if started.returncode:
            pytest.skip(f"pg_ctl start failed: {started.stderr.strip()[-200:]}")
        created = run(str(PG_BIN / "createdb"), "-h", str(sock), "-U", "postgres", "optuna")
        assert created.returncode == 0, created.stderr
        yield f"postgresql+psycopg2://postgres@/optuna?host={sock}"
    finally:
        run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_on_postgresql_finish_exactly_trials(tmp_path, postgres):
    config = write_config(tmp_path / "c.yaml")
    out = tmp_path / "search"
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "clrctl", "sweep", str(config), "--search", "random", "--trials", "3",
           "--param", "policy.lr=loguniform(0.01, 0.2)", "--storage", postgres, "--study", "shared",
           "--run-dir", str(out), "-q"]
    workers = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(outputs)
    trials = optuna.load_study(study_name="shared", storage=postgres).trials
    finished = [t for t in trials if t.state.name == "COMPLETE"]
    surplus = [t for t in trials if "clrctl_surplus" in t.user_attrs]
    assert len(finished) == 3 and len(trials) == 3 + len(surplus)
    assert statuses(out) == ["completed"] * 3  # each finished trial ran once, in its own run directory
    workers_seen = {t.user_attrs["clrctl_worker"] for t in finished}
    assert len(workers_seen) >= 1


# ---------------------------------------------------------------------------------------
# sweep: {search: …} in the config file

BLOCK = {"search": {"sampler": "random", "trials": 2, "prune": "median",
                    "params": {"policy.lr": "loguniform(0.01, 0.2)", "model.hidden.0": "choice(16, 32)"}}}


def test_a_search_block_says_what_the_flags_say(tmp_path):
    from clrctl.sweep.search import build_search

    config = write_config(tmp_path / "c.yaml", sweep=BLOCK)
    plain = write_config(tmp_path / "plain.yaml")
    from_file = build_search(config, [], [], search=None, trials=None, metric=None, prune=None, storage=None,
                             study="s", path=tmp_path / "a")
    from_flags = build_search(plain, [], ["policy.lr=loguniform(0.01, 0.2)", "model.hidden.0=choice(16, 32)"],
                              search="random", trials=2, metric="val_acc", prune="median", storage=None,
                              study="s", path=tmp_path / "a")
    assert {k: v for k, v in from_file.spec().items() if k != "config"} == \
        {k: v for k, v in from_flags.spec().items() if k != "config"}
    # the command line wins key by key; a plain override pins a key out of the block's params
    mixed = build_search(config, ["policy.lr=0.05"], ["model.hidden.0=choice(8, 64)"], search="tpe", trials=5,
                         metric=None, prune="none", storage=None, study=None, path=tmp_path / "b")
    assert (mixed.search, mixed.trials, mixed.prune, mixed.metric, mixed.prune_after) == ("tpe", 5, "none", "val_acc", None)
    assert [p.spec() for p in mixed.params] == [{"key": "model.hidden.0", "kind": "choice", "args": [8, 64]}]
    assert mixed.base["policy"]["lr"] == 0.05


def test_clrctl_sweep_runs_the_block_and_train_ignores_it(tmp_path):
    config = write_config(tmp_path / "c.yaml", sweep=BLOCK)
    out = tmp_path / "search"
    assert run_cli("sweep", config, "--run-dir", out, "-q") == 0
    assert statuses(out) == ["completed"] * 2 and index(out)["search"]["sampler"] == "random"
    assert run_cli("sweep", config, "--run-dir", out, "--trials", "3", "-q") == 0  # a rerun continues
    assert len(statuses(out)) == 3 and set(statuses(out)) <= {"completed", "pruned"}  # (median pruner on)
    assert run_cli("train", config, "--run-dir", tmp_path / "train", "-q") == 0
    assert "sweep" not in yaml.safe_load((tmp_path / "train" / "config.yaml").read_text())


@pytest.mark.parametrize("sweep, args, says", [
    ({**BLOCK, "grid": {"policy.lr": [0.1, 0.2]}}, [], "has both a grid and a search"),
    ({"search": {"trials": 2, "params": {"policy.lrr": "uniform(0.1, 0.2)"}}}, [], "unknown key policy.lrr"),
    ({"search": {"trials": 2, "params": {"policy.lr": 0.1}}}, [], "expected one of loguniform"),
    ({"search": {"params": {"policy.lr": "uniform(0.1, 0.2)"}}}, [], "a search needs"),
    ({"search": {"trials": 0, "params": {}}}, [], "sweep.search.trials"),
    ({"search": {"trials": 2, "samplr": "tpe"}}, [], "samplr"),
    ({"search": {**BLOCK["search"], "prune": "none", "prune_after": 10}}, [], "--prune-after 10: expected a step"),
    (BLOCK, ["--grid", "policy.lr=0.1,0.2"], "--grid: not with a search"),
])
def test_a_bad_search_block_exits_2_before_anything_runs(tmp_path, capsys, sweep, args, says):
    out = tmp_path / "search"
    code = run_cli("sweep", write_config(tmp_path / "c.yaml", sweep=sweep), *args, "--run-dir", out)
    err = capsys.readouterr().err.strip()
    assert code == 2 and says in err and len(err.splitlines()) == 1 and not out.exists(), err


@pytest.mark.slow  # (~30 s: a server, two worker processes)
def test_a_worker_killed_mid_trial_on_postgresql_is_retried_by_a_rerun(tmp_path, hold, postgres):
    kill_a_worker_mid_trial_then_rerun(tmp_path, hold, ["--storage", postgres, "--study", "killed"],
                                       lambda: optuna.load_study(study_name="killed", storage=postgres))


# ---------------------------------------------------------------------------------------
# Range-test-informed spaces: loguniform(from: RUN), ratio(a, b, of: KEY)

CYCLIC = {"name": "triangular", "bounds": [0.01, 0.1], "stepsize": 5}


@pytest.fixture(scope="module")
def range_test_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("range-test")
    config = root / "rt.yaml"
    config.write_text(yaml.safe_dump({**TINY, "range_test": {"start_lr": 1e-4, "end_lr": 1.0, "steps": "3 epochs",
                                                            "eval_every": 3}}))
    assert run_cli("range-test", config, "--run-dir", root / "rt", "-q") == 0
    return root / "rt"


def test_a_space_from_a_range_test_and_base_lr_as_a_ratio_of_max_lr(tmp_path, range_test_run):
    suggestion = json.loads((range_test_run / "summary.json").read_text())["suggestion"]
    low = suggestion["base_lr"]
    high = max(suggestion["max_lr"], suggestion["candidates"]["loss_min"]["lr"] or 0)
    out = tmp_path / "search"
    assert run_cli("sweep", write_config(tmp_path / "c.yaml", policy=CYCLIC), "--search", "random", "--trials", "3",
                   "--param", f"policy.bounds.1=loguniform(from: {range_test_run})",
                   "--param", "policy.bounds.0=ratio(0.1, 0.5, of: policy.bounds.1)", "--run-dir", out, "-q") == 0
    idx = index(out)
    assert idx["search"]["params"][0] == {"key": "policy.bounds.1", "kind": "loguniform", "args": [low, high],
                                          "from": str(range_test_run)}
    for point in idx["points"]:
        base, peak = yaml.safe_load((out / point["path"] / "config.yaml").read_text())["policy"]["bounds"]
        assert low <= peak <= high and 0.1 * peak <= base <= 0.5 * peak
        assert [point["overrides"]["policy.bounds.0"], point["overrides"]["policy.bounds.1"]] == [base, peak]


@pytest.mark.parametrize("param, says", [
    ("policy.bounds.1=loguniform(from: {missing})", "is not a finished run (no such directory)"),
    ("policy.bounds.1=loguniform(from: {trained})", "has no suggested bounds"),
    ("policy.bounds.0=ratio(0.5, 0.1, of: policy.bounds.1)", "ratio needs 0 < low < high"),
    ("policy.bounds.0=ratio(0.1, 0.5)", "expected ratio(low, high, of: KEY)"),
    ("policy.bounds.0=ratio(0.1, 0.5, of: policy.bounds.7)", "'7' is not an index of policy.bounds"),
    ("policy.bounds.0=ratio(0.1, 0.5, of: policy.name)", "policy.name is not a number"),
])
def test_a_bad_range_test_space_exits_2_before_anything_runs(tmp_path, capsys, param, says):
    trained = tmp_path / "trained"
    config = write_config(tmp_path / "c.yaml", policy=CYCLIC)
    if "trained" in param:
        assert run_cli("train", config, "--run-dir", trained, "-q") == 0
    out = tmp_path / "search"
    code = run_cli("sweep", config, "--search", "random", "--trials", "2", "--run-dir", out,
                   "--param", param.format(missing=tmp_path / "nowhere", trained=trained))
    err = capsys.readouterr().err.strip()
    assert code == 2 and says in err and len(err.splitlines()) == 1 and not out.exists(), err


def test_prune_after_keeps_a_hopeless_trial_running_to_that_step(tmp_path):
    db = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="p", storage=db, direction="maximize")
    for lr in ("0.05", "0.1", "1.0e-06"):
        study.enqueue_trial({"policy.lr": lr})
    out = tmp_path / "search"
    config = write_config(tmp_path / "c.yaml", train={"epochs": 2, "eval_every": 5})
    args = ["sweep", config, "--search", "random", "--param", "policy.lr=choice(0.05, 0.1, 0.000001)",
            "--storage", db, "--study", "p", "--run-dir", out, "-q"]
    assert run_cli(*args, "--trials", "2") == 0
    assert run_cli(*args, "--trials", "3", "--prune", "median", "--prune-after", "20") == 0
    trial = optuna.load_study(study_name="p", storage=db).trials[2]
    pruned = json.loads((out / trial.user_attrs["clrctl_run"] / "summary.json").read_text())
    assert trial.state.name == "PRUNED" and pruned["steps"] == 20 == max(trial.intermediate_values)  # not at 5
    assert index(out)["search"]["prune_after"] == 20


def test_a_sampler_seed_repeats_a_study(tmp_path):
    config = write_config(tmp_path / "c.yaml")
    sampled = []
    for name in ("a", "b"):
        assert run_cli("sweep", config, "--search", "random", "--trials", "2", "--sampler-seed", "3", "--param",
                       "policy.lr=loguniform(0.01, 0.2)", "--run-dir", tmp_path / name, "-q") == 0
        idx = index(tmp_path / name)
        assert idx["search"]["sampler_seed"] == 3
        sampled.append([p["overrides"] for p in idx["points"]])
    assert sampled[0] == sampled[1] and sampled[0][0] != sampled[0][1]
