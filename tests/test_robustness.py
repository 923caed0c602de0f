"""Runs that survive (issue 5): kill -9 then --resume reproduces an uninterrupted run,
SIGINT/SIGTERM stop cleanly with exit 130, divergence is kept and reported, exit 1."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

TESTS = Path(__file__).parent


def slow_config(tiny_config, delay_s=0.01, **sections):
    sections["train"] = {"epochs": 3, "eval_every": 5, **sections.get("train", {})}
    return tiny_config("slow", model={"name": "slow_model:build", "args": {"delay_s": delay_s}}, **sections)


def spawn(*args, env=None):
    """``python -m clrctl ARGS`` with tests/ importable; ``env``: more environment (a hold's)."""
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "MPLBACKEND": "Agg",
           **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "clrctl", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(path: Path, rows: int, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and sum(1 for _ in open(path)) - 1 >= rows:
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before {rows} rows: {proc.stderr.read()}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {rows} rows in {path}")


def without_elapsed(path: Path):
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in csv.DictReader(handle)]


@pytest.fixture
def slow_models_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def test_kill_9_then_resume_equals_uninterrupted(cli, tiny_config, tmp_path, slow_models_importable, reference_run,
                                                hold):
    # last.pt at every epoch end (by default at most every 10 s): resumed from the first one
    cfg = slow_config(tiny_config, train={"checkpoint_every": 0})
    ref = reference_run(cfg)

    held = hold(50)  # (not past step 50 before the kill)
    proc = spawn("train", cfg, "--run-dir", tmp_path / "killed", "-q", env=held.env)
    wait_for_rows(tmp_path / "killed" / "epochs.csv", 1, proc)  # one epoch (and its checkpoint) done
    wait_for_rows(tmp_path / "killed" / "metrics.csv", 30, proc)  # and part of the next
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    held.release()
    killed = tmp_path / "killed"
    assert json.loads((killed / "run.json").read_text())["status"] == "running"

    assert cli("train", "--resume", killed, "-q") == 0
    assert (killed / "metrics.csv").read_bytes() == (ref / "metrics.csv").read_bytes()
    assert without_elapsed(killed / "epochs.csv") == without_elapsed(ref / "epochs.csv")
    info = json.loads((killed / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed"][0]["step"] in (22, 44)  # an epoch boundary


# A real signal from outside (another process): SIGINT here; SIGTERM's subprocess test is
# test_lifecycle's test_signal_once_the_run_dir_exists_leaves_it_resumable, and the in-process
# test below checks all of this for both signals at an exact step.
@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_signal_stops_cleanly_with_130_and_resumes_exactly(cli, tiny_config, tmp_path, slow_models_importable, sig,
                                                          reference_run, hold):
    cfg = slow_config(tiny_config)
    ref = reference_run(cfg)

    run = tmp_path / "stopped"
    held = hold(50)
    proc = spawn("train", cfg, "--run-dir", run, "-q", env=held.env)
    wait_for_rows(run / "metrics.csv", 30, proc)  # mid second epoch
    proc.send_signal(sig)
    held.release()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    _stopped_cleanly_then_resumed(cli, run, ref, err)


def _stopped_cleanly_then_resumed(cli, run, ref, err: str) -> None:
    """A run stopped by a signal mid second epoch: exit message, files, then an exact resume."""
    assert "resume with: clrctl train --resume" in err and "Traceback" not in err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 30 <= summary["steps"] < 66
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "plots" / "loss.png").is_file()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == summary["steps"]  # every finished step was flushed

    assert cli("train", "--resume", run, "-q") == 0  # resumes mid-epoch
    assert (run / "metrics.csv").read_bytes() == (ref / "metrics.csv").read_bytes()
    assert without_elapsed(run / "epochs.csv") == without_elapsed(ref / "epochs.csv")


@pytest.mark.plots  # (it reads the plots: conftest skips them elsewhere)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_at_a_step_stops_cleanly_with_130_and_resumes_exactly(cli, tiny_config, tmp_path, capsys, sig,
                                                                       reference_run, signal_cli_at):
    """The test above in-process: the signal lands right after step 30 (mid second epoch)."""
    cfg = tiny_config(train={"epochs": 3, "eval_every": 5})
    ref = reference_run(cfg)

    run = tmp_path / "stopped"
    signal_cli_at(30, sig)
    capsys.readouterr()
    assert cli("train", cfg, "--run-dir", run, "-q") == 130
    err = capsys.readouterr().err
    _stopped_cleanly_then_resumed(cli, run, ref, err)


@pytest.mark.plots  # (it reads the plots: conftest skips them elsewhere)
def test_divergence_is_kept_and_reported(cli, tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    code = cli("train", tiny_config(), "policy.name=fixed", "policy.bounds=[1e8, 2e8]", "--run-dir", run, "-q")
    assert code == 1
    err = capsys.readouterr().err
    assert "loss became" in err and "at step" in err and "range-test" in err and "Traceback" not in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at"]["lr"] == 1e8
    assert json.loads((run / "run.json").read_text())["status"] == "diverged"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert rows[-1]["loss"] in ("nan", "inf") and int(rows[-1]["step"]) == summary["diverged_at"]["step"]
    assert (run / "plots" / "loss.png").is_file()


def test_skip_nonfinite_keeps_going(cli, tiny_config, tmp_path):
    run = tmp_path / "run"
    code = cli("train", tiny_config(), "policy.name=fixed", "policy.bounds=[1e8, 2e8]", "train.skip_nonfinite=true",
               "train.epochs=1", "--run-dir", run, "-q")
    assert code == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 22


@pytest.mark.plots  # (it reads the plots: conftest skips them elsewhere)
def test_resume_refuses_completed_and_non_runs(cli, tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", tiny_config(), "train.epochs=1", "--run-dir", run, "-q") == 0
    assert cli("train", "--resume", run) == 2
    assert "already completed" in capsys.readouterr().err
    assert cli("train", "--resume", tmp_path) == 2
    assert "not a clrctl run directory" in capsys.readouterr().err


def test_json_files_are_written_atomically(tmp_path, monkeypatch):
    from clrctl.runs import rundir

    target = tmp_path / "summary.json"
    rundir.write_json_atomic(target, {"status": "completed"})

    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(rundir.os, "replace", boom)
    with pytest.raises(rundir.WriteFailed, match="summary.json: cannot write \\(disk full\\)"):
        rundir.write_json_atomic(target, {"status": "half-written"})
    assert json.loads(target.read_text()) == {"status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary left behind
