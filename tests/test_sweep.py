"""clrctl sweep, the library parts that need no training: grid syntax, point names, the plan
and its validation, lock files, worker environment, shards."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from clrctl.errors import ConfigError, InputError
from clrctl.sweep import locks
from clrctl.sweep.grid import parse_grid_option, point_names, short_keys, split_values
from clrctl.sweep.plan import build_plan
from clrctl.sweep.runner import parse_shard, shard_runs, worker_env
from clrctl.sweep.store import point_status


# -- grid syntax -------------------------------------------------------------------------
def test_brackets_quotes_and_yaml_values():
    assert parse_grid_option("policy.bounds=[0.01,0.1],[0.02,0.2]") == ("policy.bounds", [[0.01, 0.1], [0.02, 0.2]])
    assert parse_grid_option("policy.stepsize=1 epochs,2 epochs,500") == ("policy.stepsize", ["1 epochs", "2 epochs", 500])
    assert parse_grid_option("model.args={a: 1, b: 2},{a: 3}") == ("model.args", [{"a": 1, "b": 2}, {"a": 3}])
    assert parse_grid_option("name='x,y',z") == ("name", ["x,y", "z"])
    assert parse_grid_option("train.amp=true,false") == ("train.amp", [True, False])
    assert split_values("[1,[2,3]],4") == ["[1,[2,3]]", "4"]


@pytest.mark.parametrize("bad", ["policy.lr", "=1,2", "policy.lr=1,,2", "policy.lr=[1,2", "policy.lr=1,1", "a..b=1"])
def test_bad_grid_options_are_refused(bad):
    with pytest.raises(InputError, match="--grid"):
        parse_grid_option(bad)


def test_point_names_are_readable_unique_and_filesystem_safe():
    points = [{"policy.name": "exp_range", "policy.stepsize": "2 epochs", "policy.bounds": [0.01, 0.1]},
              {"policy.name": "fixed", "policy.bounds": None, "policy.lr": 1e-3},
              {"policy.name": "fixed", "policy.bounds": None, "policy.lr": "1e-3/2"}]
    names = point_names(points)
    assert names[0] == "policy-exp-range_stepsize-2epochs_bounds-0.01-0.1"
    assert names[1] == "policy-fixed_lr-0.001"
    assert names[2] == "policy-fixed_lr-1e-3-2"
    assert point_names([{"a": "x/y"}, {"a": "x-y"}]) == ["a-x-y", "a-x-y-2"]  # clash after slugging
    assert short_keys(["policy.momentum", "optimizer.momentum", "policy.name"]) == {
        "policy.momentum": "policy.momentum", "optimizer.momentum": "optimizer.momentum", "policy.name": "policy"}


# -- the plan ----------------------------------------------------------------------------
def test_plan_combines_the_sweep_block_and_the_command_line(tiny_config):
    cfg = tiny_config(sweep={"grid": {"policy.name": ["triangular", "triangular2"], "train.epochs": [1, 2]},
                             "include": [{"policy.name": "fixed", "policy.bounds": None, "policy.lr": 0.01}],
                             "seeds": 2})
    plan = build_plan(cfg, [], [], None)
    assert [p.name for p in plan.points] == ["policy-triangular_epochs-1", "policy-triangular_epochs-2",
                                             "policy-triangular2_epochs-1", "policy-triangular2_epochs-2",
                                             "policy-fixed_lr-0.01"]
    assert all(p.seeds == [0, 1] and p.is_group for p in plan.points)
    fixed = plan.points[-1]
    assert fixed.included and fixed.config["policy"]["lr"] == 0.01 and fixed.config["policy"]["bounds"] is None
    assert "sweep" not in fixed.config  # a point is a plain run config
    assert [r.rel for r in fixed.runs()] == ["points/policy-fixed_lr-0.01/seed-0", "points/policy-fixed_lr-0.01/seed-1"]

    # a plain override pins a key of the block's grid; --grid replaces one; --seeds replaces seeds
    plan = build_plan(cfg, ["train.epochs=3"], ["policy.name=triangular,exp_range"], "5,7")
    assert [p.overrides for p in plan.points[:2]] == [{"policy.name": "triangular"}, {"policy.name": "exp_range"}]
    assert plan.points[0].config["train"]["epochs"] == 3 and plan.points[0].seeds == [5, 7]
    assert plan.grid == {"policy.name": ["triangular", "exp_range"]}


@pytest.mark.parametrize("grid, message", [
    ("policy.stepsize=7,-1", "point stepsize-1: policy.stepsize: must be positive"),
    ("policy.stepsizee=1,2", "point stepsizee-1: policy.stepsizee: unknown key (did you mean 'stepsize'?)"),
    ("policy.bounds=[0.01,0.1],[0.2,0.1]", "point bounds-0.2-0.1: policy.bounds: base_lr must be < max_lr"),
])
def test_a_bad_point_is_named(tiny_config, grid, message):
    with pytest.raises(ConfigError) as err:
        build_plan(tiny_config(), [], [grid], None)
    assert message in str(err.value)


def test_bad_sweep_block_is_refused(tiny_config):
    with pytest.raises(ConfigError, match="sweep.grid"):
        build_plan(tiny_config(sweep={"grid": {"policy.lr": []}}), [], [], None)
    with pytest.raises(InputError, match="nothing to sweep"):
        build_plan(tiny_config(), [], [], None)


def test_train_ignores_the_sweep_block(tiny_config):
    from clrctl.config.schema import load_config

    config = load_config(tiny_config(sweep={"grid": {"policy.name": ["triangular"]}, "seeds": 3}))
    assert config.sweep.seeds == 3 and "sweep" not in config.to_dict()


# -- locks -------------------------------------------------------------------------------
def test_a_lock_is_exclusive_and_released(tmp_path):
    path = tmp_path / "run.lock"
    first = locks.claim(path)
    assert first is not None and locks.claim(path) is None  # this very process holds it: alive
    locks.release(first)
    assert not path.exists() and locks.claim(path) is not None


def test_stale_locks_are_taken_over_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    path = tmp_path / "run.lock"
    path.write_text(json.dumps({"host": host, "pid": dead.pid, "worker": None, "nonce": "abc"}))
    assert locks.claim(path) is not None  # same host, pid gone: stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock", "run.lock.stale-abc"]
    # a second process that judged "abc" stale too finds the marker and backs off
    path.write_text(json.dumps({"host": host, "pid": dead.pid, "worker": None, "nonce": "abc"}))
    assert locks.claim(path) is None


def test_staleness_rule():
    now = time.time()
    alive = {"host": "here", "pid": os.getpid(), "worker": None}
    assert not locks.is_stale(alive, now, now, "here")
    assert not locks.is_stale({**alive, "host": "elsewhere", "pid": 999999}, now, now, "here")  # can't tell
    assert locks.is_stale({**alive, "host": "elsewhere"}, now - locks.LEASE_S - 1, now, "here")  # no heartbeat
    assert locks.is_stale({}, now - 120, now, "here") and not locks.is_stale({}, now - 5, now, "here")


# -- pool environment and shards ---------------------------------------------------------
def test_workers_divide_cores_and_get_a_gpu_each():
    env = worker_env(slot=3, jobs=4, cores=16, gpus=["0", "1"], device="auto", base={})
    assert env["OMP_NUM_THREADS"] == "4" and env["CUDA_VISIBLE_DEVICES"] == "1"
    assert worker_env(0, 3, 2, [], "cpu", base={})["OMP_NUM_THREADS"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(0, 2, 2, ["0", "1"], "cuda:1", base={})  # it names its GPU
    assert worker_env(0, 2, 8, [], "cpu", base={"OMP_NUM_THREADS": "1"})["OMP_NUM_THREADS"] == "1"  # user's wins


def test_shards_partition_the_runs(tiny_config):
    plan = build_plan(tiny_config(), [], ["policy.name=triangular,triangular2,exp_range"], "2")
    runs = plan.runs()
    shares = [shard_runs(runs, (i, 4)) for i in range(1, 5)]
    assert sorted((r for share in shares for r in share), key=runs.index) == runs
    assert sum(len(s) for s in shares) == len(runs) == 6
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)


def test_point_status_is_the_worst_of_its_runs():
    assert point_status(["completed", "completed"]) == "completed"
    assert point_status(["completed", "diverged"]) == "diverged"
    assert point_status(["completed", "pending"]) == "partial"
    assert point_status(["interrupted", "completed"]) == "interrupted"
    assert point_status(["pending", "pending"]) == "pending"


def test_the_showcase_config_is_valid():
    from conftest import CONFIGS

    plan = build_plan(CONFIGS / "digits-stepsize-sweep.yaml", [], [], None)
    assert len(plan.points) == 10 and len(plan.runs()) == 30
    assert yaml.safe_load((CONFIGS / "digits-stepsize-sweep.yaml").read_text())["train"]["target"] == {"val_acc": 0.97}
