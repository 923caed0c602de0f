"""DistributedDataParallel on CPU (issue 9): 2 processes, gloo, digits, through the launcher
of ``clrctl train --nproc 2`` (torch.distributed.run, as torchrun)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_robustness import spawn, wait_for_rows

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run_json(path):
    return json.loads((path / "run.json").read_text())


def test_two_processes_match_one(cli, tiny_config, tmp_path):
    cfg = tiny_config(train={"epochs": 2, "eval_every": 10})
    assert cli("train", cfg, "--run-dir", tmp_path / "one", "-q") == 0
    proc = spawn("train", cfg, "--nproc", "2", "--run-dir", tmp_path / "two", "-q")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err

    one, two = rows(tmp_path / "one" / "metrics.csv"), rows(tmp_path / "two" / "metrics.csv")
    assert [r["step"] for r in two] == [r["step"] for r in one]
    assert [r["lr"] for r in two] == [r["lr"] for r in one]
    for a, b in zip(one, two):  # the same samples per step: only the order of float sums differs
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-3)
        assert bool(a["val_acc"]) == bool(b["val_acc"])
    info = run_json(tmp_path / "two")
    assert (info["world_size"], info["backend"], info["status"]) == (2, "gloo", "completed")
    assert run_json(tmp_path / "one")["world_size"] == 1

    # The sharded, reduced validation equals one process evaluating the final checkpoint.
    from clrctl.config.schema import load_config
    from clrctl.engine.setup import build_setup
    from clrctl.engine.step import evaluate

    setup = build_setup(load_config(cfg))
    saved = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=False)
    assert not any(k.startswith("module.") for k in saved["model"])  # the unwrapped module
    setup.model.load_state_dict(saved["model"])
    _, val_acc = evaluate(setup.model, setup.data.val, setup.loss_fn)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["final_val_acc"] == val_acc
    assert float(two[-1]["val_acc"]) == val_acc


def test_sigterm_to_launcher_interrupts_and_resume_completes(tiny_config, tmp_path, hold):
    cfg = tiny_config("slow", model={"name": "slow_model:build", "args": {"delay_s": 0.02}},
                      train={"epochs": 2, "eval_every": 5, "log_every": 5})
    run = tmp_path / "run"
    held = hold(20)  # (both ranks: not past step 20 before the signal)
    proc = spawn("train", cfg, "--nproc", "2", "--run-dir", run, "-q", env=held.env)
    wait_for_rows(run / "metrics.csv", 10, proc, timeout=90)
    proc.send_signal(signal.SIGTERM)
    held.release()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert run_json(run)["status"] == "interrupted"
    assert "--resume" in err
    stopped = len(rows(run / "metrics.csv"))

    proc = spawn("train", "--resume", run, "--nproc", "2", "-q")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    done = rows(run / "metrics.csv")
    assert run_json(run)["status"] == "completed" and len(done) > stopped
    assert [int(r["step"]) for r in done] == list(range(len(done)))
    assert json.loads((run / "summary.json").read_text())["steps"] == len(done)


def test_batch_size_must_divide_by_the_processes(cli, tiny_config, tmp_path, capsys):
    cfg = tiny_config(dataset={"name": "digits", "batch_size": 63})
    assert cli("train", cfg, "--nproc", "2", "--run-dir", tmp_path / "run") == 2
    assert "does not divide by the 2 processes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_batch_size_refused_under_torchrun_before_the_process_group(cli, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = tiny_config(dataset={"name": "digits", "batch_size": 63})
    assert cli("train", cfg, "--run-dir", tmp_path / "run") == 2
    assert not torch.distributed.is_initialized()
    assert not (tmp_path / "run").exists()


def test_shares_of_a_batch_cover_it_once():
    from clrctl.engine.ddp import shard_bounds

    for n in (0, 1, 5, 32, 33):
        bounds = [shard_bounds(n, r, 3) for r in range(3)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert [hi - lo for lo, hi in bounds] == [len(t) for t in torch.arange(n).tensor_split(3)]


@pytest.mark.slow
def test_a_crashing_rank_stops_the_run_as_failed(tiny_config, tmp_path):
    cfg = tiny_config("crash", model={"name": "crash_model:build", "args": {"after": 30}},
                      train={"epochs": 2, "eval_every": 5, "log_every": 5, "checkpoint_every": 0})
    proc = spawn("train", cfg, "--nproc", "2", "--run-dir", tmp_path / "run", "-q")
    _, err = proc.communicate(timeout=120)  # no hang: the launcher stops the other rank
    assert proc.returncode == 1, err
    assert "rank 1 crashed on purpose" in err
    assert "Connection closed" not in err  # rank 0 only lost its peer: rank 1's own error is the one shown
    assert run_json(tmp_path / "run")["status"] == "failed"
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()  # resumable


@pytest.mark.slow
def test_range_test_in_two_processes_matches_one(cli, tiny_config, tmp_path):
    cfg = tiny_config("rt", range_test={"start_lr": 0.001, "end_lr": 1.0, "steps": 40, "eval_every": 10})
    assert cli("range-test", cfg, "--run-dir", tmp_path / "one", "-q") == 0
    proc = spawn("range-test", cfg, "--nproc", "2", "--run-dir", tmp_path / "two", "-q")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert len([line for line in out.splitlines() if line.startswith("range-test: 40/40 steps")]) == 1  # rank 0 only
    one, two = rows(tmp_path / "one" / "metrics.csv"), rows(tmp_path / "two" / "metrics.csv")
    assert [r["lr"] for r in two] == [r["lr"] for r in one]
    for a, b in zip(one[:25], two[:25]):  # (at high LRs, float rounding grows chaotically)
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-3)
    assert run_json(tmp_path / "two")["world_size"] == 2


def test_image_folder_shares_of_each_batch_add_up_to_one_process_batches(tmp_path):
    """The DataLoader path's distributed batch sampler: rank 0 and rank 1 of 2 together see
    exactly the samples of each one-process batch, in order, also when resumed mid-epoch."""
    import torch

    from clrctl.data.sources import LoaderSource

    class Indexed(torch.utils.data.Dataset):  # sample i is the image i: easy to follow
        def __len__(self):
            return 11

        def __getitem__(self, i):
            return torch.full((1, 2, 2), float(i)), i

    def batches(shard, start=0):
        source = LoaderSource(Indexed(), 4, "cpu", shuffle=True, seed=3)
        source.shard = shard
        return [y.tolist() for _, y in source.batches(epoch=1, start=start)]

    for start in (0, 1):
        whole = batches(None, start)
        ranks = [batches((rank, 2), start) for rank in (0, 1)]
        assert [a + b for a, b in zip(*ranks)] == whole
        assert len(whole) == 3 - start


# ---------------------------------------------------------------------------------------
# A rank that blocks, a launcher that dies, an error on one rank (issue 17)


def workers_of(launcher) -> dict[int, int]:
    """{rank: pid} of the workers a ``clrctl … --nproc`` launcher started (Linux /proc)."""
    children = []
    for task in Path(f"/proc/{launcher.pid}/task").iterdir():
        children += (task / "children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        env = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
        rank = next(item.split("=", 1)[1] for item in env if item.startswith("RANK="))
        ranks[int(rank)] = pid
    return ranks


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # (a zombie has ended)
    except FileNotFoundError:
        return True


def wait_until_gone(pids, timeout=60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gone(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.mark.slow
def test_a_stuck_rank_fails_the_run_after_the_timeout(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("CLRCTL_DDP_TIMEOUT", "1")
    cfg = tiny_config("stall", model={"name": "rank_model:build", "args": {"after": 3, "stall_s": 4}})
    proc = spawn("train", cfg, "--nproc", "2", "--run-dir", tmp_path / "run", "-q")
    try:
        _, err = proc.communicate(timeout=120)  # torch's default timeout: 30 minutes of a hung job
    except subprocess.TimeoutExpired:
        proc.kill()  # (its workers follow their launcher)
        raise
    assert proc.returncode == 1, err
    assert err.splitlines() == ["error: a collective operation timed out after 1 s (CLRCTL_DDP_TIMEOUT): "
                                "another process is stuck or slower than that"]
    assert run_json(tmp_path / "run")["status"] == "failed"


def test_a_bad_timeout_is_refused_before_any_process_starts(cli, tiny_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLRCTL_DDP_TIMEOUT", "soon")
    assert cli("train", tiny_config(), "--nproc", "2", "--run-dir", tmp_path / "run") == 2
    assert "CLRCTL_DDP_TIMEOUT: expected a positive number of seconds, got 'soon'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@linux_only
def test_killing_the_launcher_stops_its_workers(tiny_config, tmp_path, hold):
    cfg = tiny_config("slow", model={"name": "slow_model:build", "args": {"delay_s": 0.02}},
                      train={"epochs": 4, "eval_every": 5, "log_every": 5})
    run = tmp_path / "run"
    held = hold(20)
    proc = spawn("train", cfg, "--nproc", "2", "--run-dir", run, "-q", env=held.env)
    wait_for_rows(run / "metrics.csv", 10, proc, timeout=90)
    workers = workers_of(proc)
    assert sorted(workers) == [0, 1]
    proc.kill()
    proc.wait()
    held.release()
    assert wait_until_gone(workers.values()), "workers still running after their launcher was killed"
    info = run_json(run)
    assert info["status"] == "interrupted"  # stopped together, at a step rank 0 checkpointed
    assert (run / "checkpoints" / "last.pt").is_file()
    assert json.loads((run / "summary.json").read_text())["steps"] == len(rows(run / "metrics.csv"))


@linux_only
def test_rank_0_killed_marks_the_run_failed(tiny_config, tmp_path, hold):
    cfg = tiny_config("slow", model={"name": "slow_model:build", "args": {"delay_s": 0.02}},
                      train={"epochs": 4, "eval_every": 5, "log_every": 5})
    run = tmp_path / "run"
    held = hold(20)
    proc = spawn("train", cfg, "--nproc", "2", "--run-dir", run, "-q", env=held.env)
    wait_for_rows(run / "metrics.csv", 10, proc, timeout=90)
    os.kill(workers_of(proc)[0], signal.SIGKILL)
    held.release()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "rank 0 (killed by SIGKILL)" in err and "Connection closed" not in err
    info = run_json(run)
    assert info["status"] == "failed" and info["end_time"]
    assert "rank 0 (killed by SIGKILL)" in info["error"]


def test_an_error_on_one_rank_is_that_ranks_and_fails_the_run(tiny_config, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config("one", model={"name": "rank_model:build",
                                    "args": {"fail_build": True, "wait_for": str(run / "run.json")}})
    proc = spawn("train", cfg, "--nproc", "2", "--run-dir", run, "-q")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err  # the run directory exists: a run that ended badly
    assert len(err.splitlines()) == 1 and err.startswith("error: rank 1: model.name: 'rank_model:build' raised "
                                                         "RuntimeError: rank 1 cannot build its model"), err
    info = run_json(run)
    assert info["status"] == "failed" and "rank 1 cannot build its model" in info["error"]
