"""One writer per run directory and statuses that never lie (issue 17, parts 2, 4, 6 and 7).

Real subprocesses (``python -m clrctl``), real signals, real files; a full disk is a real
``RLIMIT_FSIZE`` in the child (a write past it fails with EFBIG, as one past a full disk fails
with ENOSPC), a read-only destination a path that cannot be created (the tests run as root,
which ignores permissions)."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import time
from pathlib import Path

import pytest

from clrctl.runs import rundir
from clrctl.sweep import locks
from test_lifecycle import wait_until
from test_robustness import slow_config, spawn, wait_for_rows  # noqa: F401
from test_robustness import slow_models_importable  # noqa: F401 (fixture)


def status(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["status"]


def steps(run: Path) -> list[int]:
    return [int(row["step"]) for row in rundir.read_csv(run / "metrics.csv")]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- part 2: one writer per run directory -------------------------------------------------


def test_a_second_train_on_a_live_run_dir_is_refused_and_changes_nothing(tiny_config, tmp_path, hold):
    # No row reaches metrics.csv before the epoch ends: the directory "holds no results" while
    # the first process trains, which is what let a second one clear and reuse it.
    cfg = slow_config(tiny_config, train={"epochs": 1, "eval_every": 100, "log_every": 100})
    run = tmp_path / "run"
    held = hold(5)  # the first one trains until the second has been refused
    first = spawn("train", cfg, "--run-dir", run, "-q", env=held.env)
    wait_until((run / "config.yaml").is_file, first, "config.yaml")
    second = spawn("train", cfg, "--run-dir", run, "-q")
    _, err = second.communicate(timeout=120)
    held.release()
    assert second.returncode == 2, err
    assert f"in use by pid {first.pid} on {socket.gethostname()}" in one_line(err)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert steps(run) == list(range(22)) and status(run) == "completed"


def test_two_trains_started_together_one_wins(tiny_config, tmp_path):
    cfg = slow_config(tiny_config, delay_s=0.05, train={"epochs": 1})
    run = tmp_path / "run"
    procs = [spawn("train", cfg, "--run-dir", run, "-q") for _ in range(2)]
    results = sorted((p.wait(timeout=120), p.stderr.read()) for p in procs)
    assert [code for code, _ in results] == [0, 2], results
    assert "in use by" in one_line(results[1][1]) or "not empty" in results[1][1]
    assert steps(run) == list(range(22))


def test_resume_of_a_live_run_is_refused_and_kill_9_frees_the_lock(cli, tiny_config, tmp_path, capsys,
                                                                  slow_models_importable, hold):
    cfg = slow_config(tiny_config, delay_s=0.02, train={"checkpoint_every": 0})
    run = tmp_path / "run"
    held = hold(30)  # (alive, in epoch 2, until killed)
    proc = spawn("train", cfg, "--run-dir", run, "-q", env=held.env)
    wait_for_rows(run / "epochs.csv", 1, proc)
    assert rundir.is_live(run)
    resumer = spawn("train", "--resume", run, "-q")
    _, err = resumer.communicate(timeout=120)
    assert resumer.returncode == 2 and f"in use by pid {proc.pid}" in one_line(err), err
    assert status(run) == "running"  # (the refused resume wrote nothing)

    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    held.release()
    assert status(run) == "running" and not rundir.is_live(run)  # left running by a process that is gone
    other = tmp_path / "other"
    assert cli("train", cfg, "--run-dir", other, "-q") == 0
    capsys.readouterr()
    assert cli("compare", run, other) == 2
    assert f"left 'running' by a process that is gone; resume with: clrctl train --resume {run}" in \
        capsys.readouterr().err
    assert cli("train", "--resume", run, "-q") == 0
    assert steps(run) == list(range(66)) and status(run) == "completed"


def test_a_claim_is_exclusive_and_names_the_holder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    child = spawn_holder(run)
    try:
        with pytest.raises(rundir.InputError, match=f"in use by pid {child.pid} on "):
            rundir.claim(run)
        with pytest.raises(rundir.InputError, match="in use by"):
            rundir.RunDir.create(tmp_path, "x", run)
        assert rundir.is_live(run)
    finally:
        child.kill()
        child.wait()
    assert not rundir.is_live(run)
    rundir.claim(run)  # freed by the kernel when its holder died
    rundir.release(run)


def spawn_holder(run: Path):
    """A process that claims ``run`` and sleeps (it says when it holds it)."""
    import subprocess
    import sys

    code = f"from clrctl.runs import rundir; rundir.claim({str(run)!r}); print('held', flush=True); import time; time.sleep(600)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_the_lock_file_is_no_result(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    rundir.claim(run)
    rundir.release(run)
    assert (run / rundir.LOCK_NAME).is_file() and rundir.holds_no_results(run)


def test_a_sweep_counts_a_run_left_running_by_a_dead_process_as_interrupted(tmp_path):
    from clrctl.sweep.plan import RunRef
    from clrctl.sweep.store import SweepDir

    sweep = SweepDir(tmp_path)
    ref = RunRef(point="p", seed=0, rel="points/p")
    run = sweep.run_path(ref)
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "running"}))
    assert sweep.run_status(ref) == "interrupted"
    child = spawn_holder(run)
    try:
        assert sweep.run_status(ref) == "running"
    finally:
        child.kill()
        child.wait()


# -- part 4: a live pid on this host holds its sweep lock whatever its age -----------------


def test_a_lock_older_than_the_lease_held_by_a_live_pid_here_is_not_taken_over(tmp_path):
    path = tmp_path / "run.lock"
    lock = locks.claim(path)
    old = time.time() - locks.LEASE_S - 100  # a sweep stopped with Ctrl-Z: no heartbeat for that long
    os.utime(path, (old, old))
    assert not locks.is_stale(lock.info, old, time.time(), socket.gethostname())
    assert locks.claim(path) is None
    assert json.loads(path.read_text())["nonce"] == lock.info["nonce"]


# -- part 6: statuses that never lie --------------------------------------------------------


def test_a_failed_resume_leaves_the_status_it_found(cli, tiny_config, tmp_path, capsys, monkeypatch):
    import clrctl.runs.lifecycle

    run = tmp_path / "run"
    assert cli("train", tiny_config(), "--run-dir", run, "-q") == 0
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))

    def broken(self, saved):
        raise RuntimeError("the checkpoint does not fit")

    monkeypatch.setattr(clrctl.runs.lifecycle.TrainingRun, "restore", broken)
    assert cli("train", "--resume", run, "-q") == 2  # a checkpoint that does not fit: bad input
    assert status(run) == "interrupted"


def test_an_error_before_the_loop_leaves_failed_not_running(cli, tiny_config, tmp_path, capsys, monkeypatch):
    import clrctl.runs.lifecycle

    def broken(self, *args, **kwargs):  # fails once the run directory exists, before the first step
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(clrctl.runs.lifecycle.TrainingRun, "__init__", broken)
    run = tmp_path / "run"
    assert cli("train", tiny_config(), "--run-dir", run, "-q") != 0
    assert status(run) == "failed"


def test_a_stepsize_that_overflows_is_refused_in_validation(cli, tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", tiny_config(), f"policy.stepsize={'9' * 400}", "--run-dir", run, "-q") == 2
    assert not run.exists()


# -- part 7: signals, plots, full disks -----------------------------------------------------


def burst(proc, count: int, gap_s: float = 0.005) -> None:
    """SIGINT and SIGTERM, alternately, ``gap_s`` apart, while the process lives."""
    for i in range(count):
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT if i % 2 == 0 else signal.SIGTERM)
        time.sleep(gap_s)


# Real signals from outside, at whatever moment they land; two at an exact step, in-process:
# the test below.
@pytest.mark.parametrize("count", [pytest.param(2, marks=pytest.mark.slow), 400])
def test_any_number_of_signals_exit_130_with_the_files_complete(cli, tiny_config, tmp_path, count,
                                                                slow_models_importable, hold):
    run = tmp_path / "run"
    held = hold(50)  # (a second signal may cut the hold short: "stop now")
    proc = spawn("train", slow_config(tiny_config, delay_s=0.02), "--run-dir", run, "-q", env=held.env)
    wait_for_rows(run / "metrics.csv", 30, proc)
    burst(proc, count)
    held.release()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with: clrctl train --resume" in one_line(err)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" == status(run)
    assert all((run / "plots" / name).stat().st_size > 0 for name in ("lr.png", "loss.png", "accuracy.png"))
    assert cli("train", "--resume", run, "-q") == 0 and steps(run) == list(range(66))


@pytest.mark.plots  # (it reads the plots: conftest skips them elsewhere)
def test_a_second_signal_right_after_the_first_exits_130_with_the_files_complete(cli, tiny_config, tmp_path, capsys,
                                                                                  signal_cli_at):
    """The test above with two signals, in-process: SIGINT then SIGTERM right after step 30
    (the second one "stop now", inside the step)."""
    run = tmp_path / "run"
    signal_cli_at(30, signal.SIGINT, signal.SIGTERM)
    capsys.readouterr()
    assert cli("train", tiny_config(train={"epochs": 3, "eval_every": 5}), "--run-dir", run, "-q") == 130
    assert "resume with: clrctl train --resume" in one_line(capsys.readouterr().err)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" == status(run)
    assert all((run / "plots" / name).stat().st_size > 0 for name in ("lr.png", "loss.png", "accuracy.png"))
    assert cli("train", "--resume", run, "-q") == 0 and steps(run) == list(range(66))


def test_signals_in_a_burst_stop_a_range_test_with_its_files_complete(tiny_config, tmp_path, hold):
    run = tmp_path / "rt"
    cfg = slow_config(tiny_config, delay_s=0.02, range_test={"steps": 200})
    held = hold(60)  # (metrics.csv is flushed every 25 rows)
    proc = spawn("range-test", cfg, "--run-dir", run, "-q", env=held.env)
    wait_for_rows(run / "metrics.csv", 30, proc)
    burst(proc, 400)
    held.release()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "partial results in" in one_line(err), err
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted" == status(run)
    assert (run / "plots" / "range_test.png").stat().st_size > 0


@pytest.mark.plots  # (it reads the plots: conftest skips them elsewhere)
def test_plots_come_before_the_final_status_and_export_redraws_them(cli, tiny_config, tmp_path, capsys,
                                                                    monkeypatch):
    import clrctl.runs.plots

    run = tmp_path / "run"
    real = clrctl.runs.plots.render_plots

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device", str(run / "plots" / "lr.png"))

    monkeypatch.setattr(clrctl.runs.plots, "render_plots", crash)
    assert cli("train", tiny_config(), "--run-dir", run, "-q") == 1
    assert f"{run / 'plots' / 'lr.png'}: no space left on device (the run is kept as 'failed'" in \
        one_line(capsys.readouterr().err)
    assert status(run) == "failed"  # never 'completed' without its plots

    monkeypatch.setattr(clrctl.runs.plots, "render_plots", real)
    assert cli("export", "plots", run) == 0
    assert all((run / "plots" / n).stat().st_size > 0 for n in ("lr.png", "loss.png", "accuracy.png"))


@pytest.mark.plots  # (it reads the plots: conftest skips them elsewhere)
def test_resume_of_a_completed_run_without_plots_redraws_them(cli, tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", tiny_config(), "--run-dir", run, "-q") == 0
    drawn = (run / "plots" / "loss.png").read_bytes()
    (run / "plots" / "loss.png").write_bytes(b"")  # what a full disk left before plots were atomic
    (run / "plots" / "lr.png").unlink()
    metrics = (run / "metrics.csv").read_bytes()
    assert cli("train", "--resume", run, "-q") == 0
    assert (run / "plots" / "loss.png").read_bytes() == drawn and (run / "plots" / "lr.png").stat().st_size > 0
    assert (run / "metrics.csv").read_bytes() == metrics and status(run) == "completed"
    assert cli("train", "--resume", run, "-q") == 2  # plots and all: nothing to resume
    assert "nothing to resume" in capsys.readouterr().err


def spawn_limited(limit: int, *args):
    """``clrctl ARGS`` whose files cannot grow past ``limit`` bytes (EFBIG, SIGXFSZ ignored)."""

    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    import subprocess
    import sys

    from test_robustness import REPO, TESTS

    env = {**os.environ, "PYTHONPATH": str(TESTS), "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen([sys.executable, "-m", "clrctl", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


@pytest.mark.parametrize("limit, victim", [
    (1600, "metrics.csv"),  # mid-run: rows past the limit
    (30000, "plots/lr.png"),  # at the end: the run's data fit, its plots do not
])
def test_a_full_disk_fails_the_run_with_one_line_naming_the_file(tiny_config, tmp_path, limit, victim):
    run = tmp_path / "run"
    cfg = tiny_config(model={"name": "mlp", "hidden": [8]}, train={"epochs": 2, "eval_every": 5,
                                                                   "checkpoint_every": 1000})
    proc = spawn_limited(limit, "train", cfg, "--run-dir", run, "-q")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    line = one_line(err)
    assert f"{run / victim}: cannot write (file too large)" in line and "kept as 'failed'" in line, line
    assert status(run) == "failed"
    assert not [p for p in run.rglob("*.png") if p.stat().st_size == 0]  # atomic: a whole PNG or none
    assert not list(run.rglob("*.tmp"))


def test_a_destination_that_cannot_be_created_is_refused_with_one_line(cli, tiny_config, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    inside_a_file = tmp_path / "a-file" / "run"  # refused by the CLI before any work
    assert cli("train", tiny_config(), "--run-dir", inside_a_file, "-q") == 2
    assert one_line(capsys.readouterr().err).startswith(f"error: --run-dir {inside_a_file}: is inside ")
    not_creatable = Path("/proc/clrctl-test-run")  # refused when the run directory is made
    assert cli("train", tiny_config(), "--run-dir", not_creatable, "-q") == 2
    assert one_line(capsys.readouterr().err).startswith(f"error: {not_creatable}: cannot create the run directory (")
    assert not not_creatable.exists()
    from clrctl.api import train  # the library path has no CLI check: the run directory's own refusal
    with pytest.raises(Exception, match="cannot create the run directory"):
        train(str(tiny_config()), run_dir=inside_a_file)
