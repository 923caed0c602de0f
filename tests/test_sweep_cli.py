"""clrctl sweep from the CLI, with real worker processes: a tiny grid completes and compare ranks
it, a rerun skips what is done, a failing point gives exit 1, kill -9 then a rerun finishes
without rerunning finished runs, Ctrl-C gives 130, and two concurrent shards run the grid once."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli

TESTS = Path(__file__).parent
TINY = {
    "name": "tiny", "seed": 0, "device": "cpu",
    "dataset": {"name": "digits", "batch_size": 64},
    "model": {"name": "mlp", "hidden": [32]},
    "optimizer": {"name": "sgd", "momentum": 0.9},
    "policy": {"name": "triangular2", "bounds": [0.02, 0.1], "stepsize": 7},
    "train": {"epochs": 2, "eval_every": 5, "target": {"val_acc": 0.9}},
}


def write_config(path: Path, **sections) -> Path:
    config = {**TINY, **sections}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def spawn(*args, env=None, **kwargs):
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "MPLBACKEND": "Agg",
           **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "clrctl", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def statuses(sweep: Path) -> dict[str, str]:
    index = json.loads((sweep / "sweep.json").read_text())
    return {run["path"]: run["status"] for point in index["points"] for run in point["runs"]}


def attempts(sweep: Path) -> dict[str, int]:
    """How many times each run was started (one header line per attempt in its log)."""
    return {log.name[: -len(".log")]: sum(line.startswith("# ") for line in log.open())
            for log in (sweep / "logs").glob("*.log")}


@pytest.fixture(scope="session")
def done_sweep(tmp_path_factory):
    """A 2-point sweep (two real workers at once) run once for the tests below, by the first
    xdist worker that needs it (the others wait for it and read the same one). The tests only
    read it: test_rerun_skips_completed_runs reruns a copy."""
    import fcntl

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # (this session's, shared by its workers)
    root = shared / "done-sweep"
    with open(shared / "done-sweep.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "code").is_file():
            root.mkdir(exist_ok=True)
            config = write_config(root / "tiny.yaml")
            with pytest.MonkeyPatch.context() as patch:  # the workers' threads are the sweep's to set (conftest: 1)
                for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                    patch.delenv(var, raising=False)
                code = run_cli("sweep", config, "--grid", "policy.name=triangular,triangular2", "--run-dir",
                               root / "sweep", "-j", "2")
            (root / "code").write_text(str(code))
    return int((root / "code").read_text()), root / "sweep", root / "tiny.yaml"


def test_a_tiny_sweep_completes(done_sweep):
    code, sweep, _ = done_sweep
    assert code == 0
    index = json.loads((sweep / "sweep.json").read_text())
    assert index["schema_version"] == 1 and index["grid"] == {"policy.name": ["triangular", "triangular2"]}
    assert [(p["name"], p["status"], p["overrides"]) for p in index["points"]] == [
        ("policy-triangular", "completed", {"policy.name": "triangular"}),
        ("policy-triangular2", "completed", {"policy.name": "triangular2"})]
    for point in index["points"]:
        run = sweep / point["path"]  # a normal run directory, with the point's full config beside it
        assert json.loads((run / "run.json").read_text())["status"] == "completed"
        assert yaml.safe_load((run / "config.yaml").read_text())["policy"]["name"] == point["overrides"]["policy.name"]
        assert yaml.safe_load((sweep / point["config"]).read_text()) == yaml.safe_load((run / "config.yaml").read_text())
    assert list((sweep / "locks").glob("*.lock")) == []


def test_compare_ranks_a_sweep_in_every_format(done_sweep, capsys, tmp_path):
    _, sweep, _ = done_sweep
    capsys.readouterr()
    assert run_cli("compare", sweep, "-f", "json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["schema_version"] == 1 and report["kind"] == "sweep" and report["keys"] == ["policy.name"]
    accs = [json.loads((sweep / p["path"] / "summary.json").read_text())["final_val_acc"] for p in report["points"]]
    assert [p["rank"] for p in report["points"]] == ([1, 1] if accs[0] == accs[1] else [1, 2])
    assert accs == sorted(accs, reverse=True)  # best first
    assert report["points"][0]["metrics"]["final_val_acc"]["median"] == accs[0]
    assert report["shown"] == ["final_val_acc", "steps_to_target"]  # the runs' target: val_acc 0.9

    assert run_cli("compare", sweep, "-f", "markdown", "--metric", "steps_to_target", "--target", "val_acc=0.5",
                   "--plot", tmp_path / "lines.png") == 0
    markdown = capsys.readouterr().out
    assert "| rank | policy.name | steps to target ↓ | final val acc ↑ | runs |" in markdown
    assert markdown.count("| triangular") == 2 and (tmp_path / "lines.png").stat().st_size > 0

    assert run_cli("compare", sweep) == 0
    table = capsys.readouterr().out
    assert "ranked by final val acc" in table and "triangular2" in table and "2 points" in table

    assert run_cli("compare", sweep, "--gate") == 2
    assert "--gate: not for a sweep" in capsys.readouterr().err


def test_run_json_records_the_threads_and_the_documented_rerun_reproduces_a_point(done_sweep, tmp_path, monkeypatch):
    _, sweep, _ = done_sweep
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # as when done_sweep ran
    run = sweep / "points/policy-triangular2"
    threads = json.loads((run / "run.json").read_text())["threads"]
    share = str(max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) // 2))
    assert threads == {"torch": int(share), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", share)}
    # docs/sweeps.md's rerun: OMP_NUM_THREADS=K clrctl train DIR/configs/<point>.yaml (K from run.json)
    env = {**os.environ, "OMP_NUM_THREADS": threads["OMP_NUM_THREADS"], "MPLBACKEND": "Agg"}
    again = subprocess.run([sys.executable, "-m", "clrctl", "train", str(sweep / "configs/policy-triangular2.yaml"),
                            "--run-dir", str(tmp_path / "again"), "-q"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again/metrics.csv").read_bytes() == (run / "metrics.csv").read_bytes()
    assert json.loads((tmp_path / "again/run.json").read_text())["threads"] == threads


def test_rerun_skips_completed_runs(done_sweep, capsys, tmp_path):
    _, done, config = done_sweep
    sweep = shutil.copytree(done, tmp_path / "sweep")  # (a copy: this test writes it)
    before = {p: (sweep / p / "run.json").stat().st_mtime_ns for p in statuses(sweep)}
    capsys.readouterr()
    assert run_cli("sweep", config, "--grid", "policy.name=triangular,triangular2", "--run-dir", sweep) == 0
    assert "2 of 2 runs already done: skipped" in capsys.readouterr().out
    assert {p: (sweep / p / "run.json").stat().st_mtime_ns for p in statuses(sweep)} == before
    assert set(attempts(sweep).values()) == {1}
    # the same directory with another config for an existing point is refused
    grid = "policy.name=triangular,triangular2"
    assert run_cli("sweep", config, "train.epochs=3", "--grid", grid, "--run-dir", sweep) == 2
    assert "exists with a different config (train.epochs)" in capsys.readouterr().err
    # and so is another grid: its index would drop the finished points (refused, not merged)
    index = (sweep / "sweep.json").read_bytes()
    for other, change in (("policy.name=triangular", "policy.name: [triangular, triangular2] there, [triangular] now"),
                          ("policy.name=triangular,triangular2,exp_range", "[triangular, triangular2, exp_range] now")):
        assert run_cli("sweep", config, "--grid", other, "--run-dir", sweep) == 2
        err = capsys.readouterr().err
        assert "holds a sweep of another grid (policy.name: " in err and change in err and err.strip().count("\n") == 0
    assert (sweep / "sweep.json").read_bytes() == index and sorted(p.name for p in (sweep / "configs").iterdir()) == [
        "policy-triangular.yaml", "policy-triangular2.yaml"]


def test_a_bad_point_exits_2_before_anything_is_written(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml")
    code = run_cli("sweep", config, "--grid", "policy.bounds=[0.01,0.1],[0.1,0.01]", "--run-dir", tmp_path / "s")
    assert code == 2 and not (tmp_path / "s").exists()
    err = capsys.readouterr().err
    assert "point bounds-0.1-0.01: policy.bounds: base_lr must be < max_lr" in err and "Traceback" not in err
    assert run_cli("sweep", config, "--grid", "policy.name=triangular", "--shard", "1/2") == 2
    assert "--shard needs --run-dir" in capsys.readouterr().err


def test_a_failing_point_exits_1_and_the_others_complete(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", policy={"name": "fixed", "lr": 0.05})
    sweep = tmp_path / "s"
    code = run_cli("sweep", config, "--grid", "policy.lr=0.05,1.0e9", "--run-dir", sweep, "-j", "2")
    assert code == 1
    assert "1 of 2 runs did not complete (lr-1.0e9)" in capsys.readouterr().err
    assert statuses(sweep) == {"points/lr-0.05": "completed", "points/lr-1.0e9": "diverged"}
    assert "loss became" in json.loads((sweep / "logs" / "lr-1.0e9.exit.json").read_text())["message"]
    capsys.readouterr()
    assert run_cli("compare", sweep, "-f", "json") == 0  # the diverged point is listed, unranked
    ranks = {p["name"]: p["rank"] for p in json.loads(capsys.readouterr().out)["points"]}
    assert ranks == {"lr-0.05": 1, "lr-1.0e9": None}


def slow_sweep_args(tmp_path, *extra):
    config = write_config(tmp_path / "slow.yaml", model={"name": "slow_model:build", "args": {"delay_s": 0.02}},
                          train={"epochs": 3, "eval_every": 5, "checkpoint_every": 0})  # last.pt every epoch
    return ["sweep", config, "--grid", "policy.name=triangular,triangular2", "--run-dir", tmp_path / "s", "-q", *extra]


def wait_until(check, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            pytest.fail(f"sweep ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail("timed out")


def rows(path: Path) -> int:
    return sum(1 for _ in open(path)) - 1 if path.exists() else 0


def status_of(run: Path):
    try:
        return json.loads((run / "run.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


def test_kill_9_then_rerun_completes_without_rerunning_finished_runs(tmp_path, monkeypatch, hold):
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    args = slow_sweep_args(tmp_path)
    sweep = tmp_path / "s"
    first, second = sweep / "points/policy-triangular", sweep / "points/policy-triangular2"
    held = hold(50)
    held.release()  # held once the first run is done: the second run's worker stops at step 50 until killed
    proc = spawn(*args, env=held.env)
    wait_until(lambda: status_of(first) == "completed", proc)
    held.engage()
    wait_until(lambda: rows(second / "epochs.csv") >= 1 and rows(second / "metrics.csv") >= 30, proc)
    lock = json.loads((sweep / "locks" / "policy-triangular2.lock").read_text())
    for pid in (proc.pid, lock["worker"]):  # the whole sweep: the sweep process and its worker
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    held.release()
    assert json.loads((first / "run.json").read_text())["status"] == "completed"
    # killed mid-run ("running"), or just checkpointed if its SIGTERM-on-parent-death came first
    assert json.loads((second / "run.json").read_text())["status"] in ("running", "interrupted")
    finished = (first / "run.json").stat().st_mtime_ns

    assert run_cli(*args) == 0  # the dead holder's lock is stale; the run resumes from its checkpoint
    assert (first / "run.json").stat().st_mtime_ns == finished and attempts(sweep)["policy-triangular"] == 1
    info = json.loads((second / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed"][0]["step"] >= 22
    assert rows(second / "metrics.csv") == 66 and set(statuses(sweep).values()) == {"completed"}


def test_ctrl_c_stops_the_workers_cleanly_with_130(tmp_path, hold):
    sweep = tmp_path / "s"
    held = hold(40)
    proc = spawn(*slow_sweep_args(tmp_path, "-j", "2"), env=held.env)
    wait_until(lambda: rows(sweep / "points/policy-triangular2/metrics.csv") >= 10, proc)
    proc.send_signal(signal.SIGINT)
    held.release()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert statuses(sweep)["points/policy-triangular2"] == "interrupted"
    assert list((sweep / "locks").glob("*.lock")) == []


def test_concurrent_shards_complete_exactly_the_grid(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", train={"epochs": 1, "eval_every": 5})
    sweep = tmp_path / "s"
    args = ["sweep", config, "--grid", "policy.name=triangular,triangular2", "--seeds", "2", "--run-dir", sweep, "-q"]
    shards = [spawn(*args, "--shard", f"{i}/2") for i in (1, 2)]
    for proc in shards:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert statuses(sweep) == {f"points/policy-{p}/seed-{s}": "completed"
                               for p in ("triangular", "triangular2") for s in (0, 1)}
    assert attempts(sweep) == {f"policy-{p}.seed-{s}": 1 for p in ("triangular", "triangular2") for s in (0, 1)}
    for p in ("triangular", "triangular2"):  # each point a seed group that compare reads
        assert json.loads((sweep / f"points/policy-{p}/group.json").read_text())["runs"] == ["seed-0", "seed-1"]
    # a resized array whose share overlaps finds every run done or claimed: nothing runs twice
    capsys.readouterr()
    assert run_cli(*args, "--shard", "1/1") == 0 and set(attempts(sweep).values()) == {1}
    capsys.readouterr()
    assert run_cli("compare", sweep, "-f", "json") == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["completed"] for p in report["points"]] == [2, 2]
    assert all(p["metrics"]["final_val_acc"]["n"] == 2 for p in report["points"])


def test_dry_run_prints_bracketed_values_literally(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml")
    assert run_cli("sweep", config, "-g", "policy.bounds=[0.01,0.1],[0.02,0.2]", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "[0.01, 0.1]" in out and "[0.02, 0.2]" in out and "policy.bounds" in out
