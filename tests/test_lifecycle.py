"""A run's life cycle (issue 12): interrupts at any moment of start-up, interrupted seed groups,
file modes, and ``--seeds`` meaning one thing in every command.

The signal tests use real subprocesses (``python -m clrctl``) and wait for something visible
from outside (a signal handler in /proc, torch's library mapped, run.json on disk), never for a
fixed time; whatever moment the signal lands, the assertions are the same.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from clrctl.runs.rundir import RunDir, holds_no_results
from test_robustness import slow_config, spawn, wait_for_rows, without_elapsed  # noqa: F401 (fixture)
from test_robustness import slow_models_importable  # noqa: F401

PROC = Path("/proc")
needs_proc = pytest.mark.skipif(not (PROC / "self" / "status").is_file(), reason="needs Linux /proc")


def wait_until(condition, proc, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"process ended before {what}: {proc.stderr.read()}")
        time.sleep(0.005)
    pytest.fail(f"timed out waiting for {what}")


def catches_sigterm(pid: int) -> bool:
    """clrctl's own handler is in place (Python alone never catches SIGTERM)."""
    for line in (PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def torch_loading(pid: int) -> bool:
    return "libtorch" in (PROC / str(pid) / "maps").read_text()


def check_left_behind(run: Path) -> None:
    """Nothing, or a directory that --resume accepts or a rerun may reuse (issue 12, item 1)."""
    if not run.exists():
        return
    info = json.loads((run / "run.json").read_text())
    assert info["status"] in ("interrupted", "running")
    assert holds_no_results(run) or (run / "config.yaml").is_file()


# -- item 1: interrupts during start-up -----------------------------------------------------


@needs_proc
@pytest.mark.parametrize("command, sig, moment", [
    ("train", signal.SIGINT, catches_sigterm),  # while the CLI imports typer, rich, pydantic
    ("validate", signal.SIGTERM, torch_loading),  # inside `import torch` (pybind11 code)
    ("range-test", signal.SIGINT, torch_loading),
])
def test_signal_during_startup_exits_130_with_one_line(tiny_config, tmp_path, command, sig, moment):
    run = tmp_path / "run"
    args = [command, tiny_config(train={"epochs": 100})] + (["--run-dir", run, "-q"] if command != "validate" else [])
    proc = spawn(*args)
    wait_until(lambda: moment(proc.pid), proc, moment.__name__)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err and "Traceback" not in err, err
    if moment is catches_sigterm:  # recorded before any command code ran
        assert err.strip() == "interrupted; nothing was written" and not run.exists()
    check_left_behind(run)


def test_signal_once_the_run_dir_exists_leaves_it_resumable(cli, tiny_config, tmp_path, slow_models_importable,
                                                            hold):
    cfg = tiny_config("slow", model={"name": "slow_model:build", "args": {"delay_s": 0.02}},
                      train={"epochs": 1, "eval_every": 5})
    run = tmp_path / "run"
    held = hold(5)  # (not done before the signal)
    proc = spawn("train", cfg, "--run-dir", run, "-q", env=held.env)
    wait_until((run / "run.json").is_file, proc, "run.json")
    proc.send_signal(signal.SIGTERM)
    held.release()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().endswith(f"resume with: clrctl train --resume {run}") and "Traceback" not in err, err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert cli("train", "--resume", run, "-q") == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 22


def test_a_signal_held_through_an_import_reaches_the_handler_in_place_when_it_fires():
    """A signal that lands inside an import is held (raising there aborts torch's pybind11
    code) and delivered once the import is over — to the handler in place by then. When start-
    up has ended and the trainer's finish-the-step handler taken over, that is the handler, not
    a KeyboardInterrupt cutting through a step (CI saw such a run end as 'failed', exit 130)."""
    from clrctl import interrupts

    got: list[int] = []
    previous, _ = interrupts.install()
    try:
        interrupts._hold(signal.SIGTERM)  # what _raise does for a signal inside an import
        with interrupts.handled_by(lambda signum, _frame: got.append(signum)):
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        interrupts.restore(previous)
        interrupts.clear()
    assert got == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)  # the retry is gone


def test_a_keyboard_interrupt_inside_a_step_leaves_an_interrupted_resumable_run(cli, tiny_config, tmp_path,
                                                                               monkeypatch, capsys):
    """A second Ctrl-C ("stop now") raises inside the step: the run is 'interrupted' (exit 130),
    not 'failed', and resumes from its last checkpoint to the uninterrupted run's metrics."""
    from clrctl.engine.strategy import Strategy

    cfg = tiny_config(train={"epochs": 2, "eval_every": 5, "checkpoint_every": 0})
    assert cli("train", cfg, "--run-dir", tmp_path / "ref", "-q") == 0
    real = Strategy.stepper

    def stepper(self, *args):
        step, calls = real(self, *args), []

        def stop_now(*step_args):
            calls.append(1)
            if len(calls) == 31:  # step 30: inside epoch 2, after epoch 1's checkpoint
                raise KeyboardInterrupt
            return step(*step_args)

        return stop_now

    monkeypatch.setattr(Strategy, "stepper", stepper)
    run = tmp_path / "run"
    assert cli("train", cfg, "--run-dir", run, "-q") == 130
    assert f"resume with: clrctl train --resume {run}" in capsys.readouterr().err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(Strategy, "stepper", real)
    assert cli("train", "--resume", run, "-q") == 0
    assert (run / "metrics.csv").read_bytes() == (tmp_path / "ref" / "metrics.csv").read_bytes()


def test_interrupt_before_the_first_step_resumes_or_reruns(cli, tiny_config, tmp_path, monkeypatch, capsys):
    """Deterministic in-process version: Ctrl-C lands while the loop is being set up."""
    import clrctl.runs.training

    cfg = tiny_config(train={"epochs": 1, "eval_every": 5})
    real = clrctl.runs.training.TrainingRun

    def interrupted_loop(*args, **kwargs):
        real(*args, **kwargs)  # the CSVs get their headers, as in a real start
        raise KeyboardInterrupt

    monkeypatch.setattr(clrctl.runs.training, "TrainingRun", interrupted_loop)
    for name in ("resumed", "rerun"):
        assert cli("train", cfg, "--run-dir", tmp_path / name, "-q") == 130
        assert f"resume with: clrctl train --resume {tmp_path / name}" in capsys.readouterr().err
        assert holds_no_results(tmp_path / name)
    monkeypatch.setattr(clrctl.runs.training, "TrainingRun", real)

    assert cli("train", "--resume", tmp_path / "resumed", "-q") == 0  # from step 0
    assert cli("train", cfg, "--run-dir", tmp_path / "rerun", "-q") == 0  # reuses the directory
    assert (tmp_path / "resumed" / "metrics.csv").read_bytes() == (tmp_path / "rerun" / "metrics.csv").read_bytes()
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["resumed"][0]["step"] == 0


def test_a_directory_with_results_or_not_ours_is_never_reused(tmp_path):
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "run.json").write_text("{}")
    (ours / "metrics.csv").write_text("step,loss\n")
    (ours / ".run.json.1a2b3c4d.tmp").write_text("")
    assert holds_no_results(ours)
    run = RunDir.create(tmp_path, "x", ours)
    assert run.path == ours and [p.name for p in ours.iterdir()] == [".lock"]  # (held by this process)
    run.release()

    (ours / "run.json").write_text("{}")
    (ours / "metrics.csv").write_text("step,loss\n0,2.3\n")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("name: mine\n")  # the user's file, no run.json
    for path in (ours, foreign):
        assert not holds_no_results(path)
        with pytest.raises(Exception, match="exists and is not empty"):
            RunDir.create(tmp_path, "x", path)
    assert (foreign / "config.yaml").read_text() == "name: mine\n"


# -- item 2: an interrupted seed group is finishable ----------------------------------------


@pytest.mark.slow  # the same, in-process: the test below (a real SIGINT: test_robustness's)
def test_interrupted_seed_group_resumes_and_runs_the_rest(cli, tiny_config, tmp_path, slow_models_importable,
                                                          capsys, reference_run, hold):
    cfg = slow_config(tiny_config)
    ref = reference_run(cfg)
    group = tmp_path / "g"
    held = hold(50)
    proc = spawn("train", cfg, "--seeds", "2", "--run-dir", group, "-q", env=held.env)
    wait_for_rows(group / "seed-0" / "metrics.csv", 30, proc)
    proc.send_signal(signal.SIGINT)
    held.release()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    check_the_rest_of_the_group_runs(cli, capsys, group, ref, err)


def test_a_seed_group_stopped_in_seed_0_resumes_and_runs_the_rest(cli, tiny_config, tmp_path, capsys, reference_run,
                                                                   signal_cli_at):
    """The test above in-process: SIGINT right after step 30 of seed 0."""
    cfg = tiny_config(train={"epochs": 3, "eval_every": 5})
    ref = reference_run(cfg)
    group = tmp_path / "g"
    signal_cli_at(30, signal.SIGINT, label="seed 0")
    capsys.readouterr()
    assert cli("train", cfg, "--seeds", "2", "--run-dir", group, "-q") == 130
    check_the_rest_of_the_group_runs(cli, capsys, group, ref, capsys.readouterr().err)


def check_the_rest_of_the_group_runs(cli, capsys, group: Path, ref: Path, err: str) -> None:
    assert err.strip().endswith(f"resume with: clrctl train --resume {group}") and "seed 1" in err, err
    assert not (group / "seed-1").exists()

    assert cli("train", "--resume", group, "-q") == 0
    assert f"seed group:\n{group}\n" in capsys.readouterr().out
    for seed in (0, 1):
        info = json.loads((group / f"seed-{seed}" / "run.json").read_text())
        assert info["status"] == "completed" and info["seed"] == seed
    assert (group / "seed-0" / "metrics.csv").read_bytes() == (ref / "metrics.csv").read_bytes()
    assert without_elapsed(group / "seed-0" / "epochs.csv") == without_elapsed(ref / "epochs.csv")
    assert cli("compare", group, group) == 0
    assert cli("train", "--resume", group) == 2
    assert "already finished" in capsys.readouterr().err


# -- item 6: file modes follow the umask ----------------------------------------------------


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


@pytest.mark.plots  # (it reads the plots: conftest skips them elsewhere)
def test_every_run_file_is_readable_under_umask_022(cli, tiny_config, tmp_path, umask):
    umask(0o022)
    cfg = tiny_config(train={"epochs": 1, "eval_every": 5},
                      range_test={"steps": 20, "eval_every": 5, "start_lr": 1e-3, "end_lr": 1.0})
    assert cli("train", cfg, "--seeds", "1", "--run-dir", tmp_path / "g", "-q") == 0
    assert cli("range-test", cfg, "--run-dir", tmp_path / "rt", "-q") == 0
    found = modes(tmp_path / "g") | {f"rt/{k}": v for k, v in modes(tmp_path / "rt").items()}
    for name in ("group.json", "config.yaml", "seed-0/run.json", "seed-0/summary.json", "seed-0/metrics.csv",
                 "seed-0/checkpoints/last.pt", "seed-0/checkpoints/best.pt", "seed-0/plots/loss.png",
                 "rt/suggested.yaml", "rt/plots/range_test.png"):
        assert name in found
    assert {name: oct(mode) for name, mode in found.items() if mode != 0o644} == {}


def test_atomic_writes_follow_a_private_umask(tmp_path, umask):
    import torch

    from clrctl.files import checkpoint

    from clrctl.runs import rundir

    umask(0o077)
    rundir.write_json_atomic(tmp_path / "run.json", {"status": "running"})
    checkpoint.save_atomic({"w": torch.zeros(2)}, tmp_path / "last.pt")
    assert modes(tmp_path) == {"run.json": 0o600, "last.pt": 0o600}


# -- item 7: --seeds means one thing --------------------------------------------------------


def test_train_seed_count_starts_at_the_configs_seed(cli, tiny_config, tmp_path):
    group = tmp_path / "g"
    assert cli("train", tiny_config(seed=3), "train.epochs=1", "--seeds", "2", "--run-dir", group, "-q") == 0
    assert json.loads((group / "group.json").read_text())["seeds"] == [3, 4]
    assert [json.loads((group / f"seed-{s}" / "run.json").read_text())["seed"] for s in (3, 4)] == [3, 4]


def test_range_test_takes_a_seed_range(cli, tiny_config, tmp_path):
    run = tmp_path / "rt"
    cfg = tiny_config(range_test={"steps": 20, "eval_every": 5, "start_lr": 1e-3, "end_lr": 1.0})
    assert cli("range-test", cfg, "--seeds", "1..2", "--run-dir", run, "-q") == 0
    assert json.loads((run / "summary.json").read_text())["seeds"] == [1, 2]
    assert json.loads((run / "run.json").read_text())["seed"] == 1
    assert sorted(p.name for p in (run / "seeds").iterdir()) == ["seed-1", "seed-2"]


@pytest.mark.parametrize("command", ["train", "range-test"])
@pytest.mark.parametrize("seeds, says", [("-1", "at least 1"), ("0", "at least 1"), ("2,-1", "non-negative"),
                                         ("1,1", "distinct"), ("two", "expected a count")])
def test_bad_seeds_exit_2_before_any_run_dir(cli, tiny_config, tmp_path, capsys, command, seeds, says):
    run = tmp_path / "run"
    assert cli(command, tiny_config(), f"--seeds={seeds}", "--run-dir", run, "-q") == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
    assert not run.exists()
