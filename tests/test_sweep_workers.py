"""Warm workers (clrctl/sweep/workers.py, issue 24): a sweep's points run in turn in long-lived
worker processes. One worker runs every point of a --jobs 1 sweep and a cold ``clrctl train``
with the recorded thread count reproduces a point's bytes; a user module is imported afresh
for each point; a point that raises at import, calls os._exit or segfaults fails alone; one
past --timeout is stopped; and the pool itself resets what a job changed and replaces a
worker that crashed, hung or grew too big. Real processes and files throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clrctl.sweep.workers import Job, Worker, WorkerPool, cli_job
from conftest import REPO, run_cli
from test_sweep_cli import statuses, write_config

TESTS = Path(__file__).parent

COUNTED = '''"""A user model whose module counts the models it built: a second build in one import fails."""
from torch import nn

BUILT = []


def build(input_shape, num_classes):
    BUILT.append(1)
    if len(BUILT) > 1:
        raise RuntimeError("module state leaked from an earlier point")
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))
'''
CRASHERS = {
    "raises_at_import.py": 'raise RuntimeError("broken on purpose")\n',
    "exits.py": "import os\n\n\ndef build(input_shape, num_classes):\n    os._exit(3)\n",
    "segfaults.py": "import ctypes\n\n\ndef build(input_shape, num_classes):\n    ctypes.string_at(0)\n",
}


def exit_record(sweep: Path, run: str) -> dict:
    return json.loads((sweep / "logs" / f"{run}.exit.json").read_text())


def test_one_warm_worker_runs_every_point_and_a_cold_train_reproduces_them(tmp_path, monkeypatch):
    (tmp_path / "counted.py").write_text(COUNTED)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the sweep gives the worker its share
    config = write_config(tmp_path / "tiny.yaml", model={"name": "counted:build"},
                          train={"epochs": 1, "eval_every": 5})
    sweep = tmp_path / "s"
    assert run_cli("sweep", config, "-g", "policy.name=triangular2", "--seeds", "2", "--run-dir", sweep, "-q") == 0
    runs = ["policy-triangular2.seed-0", "policy-triangular2.seed-1"]
    assert set(statuses(sweep).values()) == {"completed"}
    workers = [exit_record(sweep, run)["worker"] for run in runs]
    # one process ran them all, in turn; counted.py's BUILT started empty for each
    assert len({w["pid"] for w in workers}) == 1 and [w["run"] for w in workers] == [1, 2]
    last = sweep / "points/policy-triangular2/seed-1"
    threads = json.loads((last / "run.json").read_text())["threads"]
    assert threads["torch"] == int(threads["OMP_NUM_THREADS"])
    # docs/sweeps.md: OMP_NUM_THREADS=K clrctl train DIR/configs/<point>.yaml seed=S, a new process
    env = {**os.environ, "OMP_NUM_THREADS": threads["OMP_NUM_THREADS"], "MPLBACKEND": "Agg"}
    cold = subprocess.run([sys.executable, "-m", "clrctl", "train", str(sweep / "configs/policy-triangular2.yaml"),
                           "seed=1", "--run-dir", str(tmp_path / "cold"), "-q"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert cold.returncode == 0, cold.stderr
    assert (tmp_path / "cold/metrics.csv").read_bytes() == (last / "metrics.csv").read_bytes()
    assert json.loads((tmp_path / "cold/run.json").read_text())["threads"] == threads


@pytest.mark.slow
def test_points_that_crash_their_worker_fail_alone(tmp_path, monkeypatch, capsys):
    for name, text in CRASHERS.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    config = write_config(tmp_path / "tiny.yaml", train={"epochs": 1, "eval_every": 5})
    sweep = tmp_path / "s"
    grid = "model.name=raises_at_import:build,exits:build,segfaults:build,mlp"
    assert run_cli("sweep", config, "-g", grid, "--run-dir", sweep, "-j", "2") == 1
    assert "3 of 4 runs did not complete" in capsys.readouterr().err
    assert statuses(sweep) == {"points/model-raises-at-import-build": "failed", "points/model-exits-build": "failed",
                               "points/model-segfaults-build": "failed", "points/model-mlp": "completed"}
    imported = exit_record(sweep, "model-raises-at-import-build")
    assert "cannot import module 'raises_at_import'" in imported["message"] and "broken on purpose" in imported["message"]
    assert exit_record(sweep, "model-exits-build")["message"].startswith("the worker died: exit code 3")
    segfault = exit_record(sweep, "model-segfaults-build")
    assert segfault["exit_code"] == -11 and "SIGSEGV (segmentation fault)" in segfault["message"]
    assert "Segmentation fault" in (sweep / "logs/model-segfaults-build.log").read_text()  # faulthandler's report
    # the error at import is the user's, not the worker's: that worker lives on; the other two were replaced
    pids = {run: exit_record(sweep, run)["worker"]["pid"] for run in
            ("model-raises-at-import-build", "model-exits-build", "model-segfaults-build", "model-mlp")}
    died = {pids["model-exits-build"], pids["model-segfaults-build"]}
    assert len(died) == 2 and pids["model-mlp"] not in died
    capsys.readouterr()
    assert run_cli("compare", sweep, "-f", "json") == 0  # the failed points are listed, unranked
    ranks = {p["name"]: p["rank"] for p in json.loads(capsys.readouterr().out)["points"]}
    assert ranks["model-mlp"] == 1 and ranks["model-exits-build"] is None


@pytest.mark.slow
def test_a_point_past_the_timeout_is_stopped_checkpointed_and_failed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    config = write_config(tmp_path / "slow.yaml", model={"name": "slow_model:build", "args": {"delay_s": 0.0}},
                          train={"epochs": 1, "eval_every": 5, "checkpoint_every": 0})
    sweep = tmp_path / "s"
    assert run_cli("sweep", config, "-g", "model.args.delay_s=0.0,1.0", "--timeout", "4", "--run-dir", sweep,
                   "-j", "2") == 1
    assert "timed out after 4 s" in capsys.readouterr().out
    record = exit_record(sweep, "delay_s-1")
    assert record["status"] == "failed" and record["exit_code"] == 130 and record["message"] == "timed out after 4 s"
    hung = json.loads((sweep / "points/delay_s-1/run.json").read_text())
    assert hung["status"] == "interrupted"  # it checkpointed: a rerun (without --timeout) resumes it
    assert statuses(sweep) == {"points/delay_s-0": "completed", "points/delay_s-1": "failed"}
    assert run_cli("sweep", config, "--timeout", "1", "--search", "tpe", "--trials", "2") == 2  # not with a search
    assert "--timeout: not with --search" in capsys.readouterr().err


# -- the pool itself ---------------------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
            **extra}


def _wait(worker: Worker, timeout: float = 120.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = worker.poll()
        if done is not None:
            return done
        time.sleep(0.02)
    pytest.fail("the job did not end")


def test_a_job_finds_the_process_as_the_fresh_worker_had_it(tmp_path):
    worker = Worker(_env(), preload=("torch",), cwd=str(tmp_path))
    try:
        log = tmp_path / "job.log"
        worker.submit(Job("warm_jobs:seen", log=str(log), argv=["first"]))
        fresh = _wait(worker)
        worker.submit(Job("warm_jobs:meddle", log=str(log)))
        meddled = _wait(worker)
        worker.submit(Job("warm_jobs:seen", log=str(log), argv=["first"]))
        after = _wait(worker)
    finally:
        worker.close()
    assert fresh.code == meddled.code == after.code == 0 and not after.died
    assert meddled.value == fresh.value["pid"] == after.value["pid"] == worker.pid and after.jobs == 3
    assert fresh.value["threads"] == 1 and fresh.value["argv"] == ["first"] and fresh.value["warned"] == 1
    assert not fresh.value["user_module_loaded"]
    assert after.value == fresh.value  # RNGs, threads, argv, cwd, path, environment, handlers, dtype, warnings
    assert "meddled" in log.read_text()


def test_the_pool_replaces_a_worker_that_crashed_hung_or_grew_too_big(tmp_path):
    pool = WorkerPool(1, preload=(), max_rss_mb=100)
    env = _env()
    log = str(tmp_path / "pool.log")
    try:
        first = pool.submit(0, env, Job("os:getpid", log=log))
        pid = _wait(first).value
        crashed = _wait(pool.submit(0, env, Job("warm_jobs:crash", log=log)))
        assert crashed.died and crashed.code == -11 and "SIGSEGV" in crashed.error and crashed.pid == pid
        second = pool.submit(0, env, Job("warm_jobs:leak", [300], log=log))
        grown = _wait(second)
        assert grown.code == 0 and grown.retired and not grown.died and grown.value != pid  # a new worker
        third = pool.submit(0, env, Job("warm_jobs:hang", log=log))
        assert third.pid != grown.value and pool.poll(0.5) == {}
        pool.replace(0)  # what a timeout does
        fourth = pool.submit(0, env, Job("os:getpid", log=log))
        assert _wait(fourth).value not in (pid, grown.value, third.pid)
        same = pool.submit(0, env, Job("os:getpid", log=log))  # a live worker with the same environment: reused
        other = _wait(same).value
        assert other == fourth.pid and pool.worker(0, _env(WARM_JOBS_MARK="x")).pid != other  # another env: new
        assert pool.started == 5
    finally:
        pool.close()
    assert "Segmentation fault" in Path(log).read_text()


def test_a_signal_while_the_worker_starts_reaches_the_job_like_a_cold_train(tmp_path):
    """SIGINT before the job's own handlers exist: the job ends at once, 130, nothing written (as
    ``clrctl train`` does when interrupted while importing); the worker retires."""
    import signal

    worker = Worker(_env(), preload=("torch", "clrctl.cli"))
    try:
        assert worker.wait_ready()
        worker.signal(signal.SIGINT)  # recorded between jobs
        config = write_config(tmp_path / "tiny.yaml")
        worker.submit(cli_job(["train", str(config), "--run-dir", str(tmp_path / "run"), "-q"], tmp_path / "log"))
        done = _wait(worker)
    finally:
        worker.close()
    assert done.code == 130 and done.retired and not (tmp_path / "run").exists()
    assert "interrupted; nothing was written" in (tmp_path / "log").read_text()
