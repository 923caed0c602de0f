"""Optimizers beside CLR (SPEC "Baselines beside CLR"): Schedule-Free SGD/AdamW and Muon train,
resume exactly, evaluate and checkpoint the averaged weights, split their groups as documented,
and refuse bad input with one line, exit 2, no run directory."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torch import nn

from clrctl.config.schema import ModelConfig, OptimizerConfig, load_config, validate
from clrctl.engine.callbacks import StopAt
from clrctl.errors import ConfigError, Interrupted
from clrctl.model.build import build_model
from clrctl.optim.groups import build_groups, muon_param_names, torch_param_groups
from clrctl.optim.muon import MuonAdamW
from clrctl.optim.optimizers import build_optimizer
from clrctl.optim.policies import preview

schedulefree = pytest.importorskip("schedulefree")

CASES = {
    "schedulefree_sgd": {"optimizer": {"name": "schedulefree_sgd"}, "policy": {"name": "fixed", "lr": 0.5}},
    "schedulefree_adamw": {"optimizer": {"name": "schedulefree_adamw"}, "policy": {"name": "fixed", "lr": 0.005}},
    "muon": {"optimizer": {"name": "muon"}, "policy": {"name": "one_cycle", "bounds": [0.001, 0.01]}},
    # policy.warmup: the ramp writes the LR, as schedulefree's own warmup_steps would
    "schedulefree_sgd-warmup": {"optimizer": {"name": "schedulefree_sgd"},
                                "policy": {"name": "fixed", "lr": 0.5, "warmup": 10}},
    "muon-warmup-cosine": {"optimizer": {"name": "muon"}, "policy": {"name": "cosine", "bounds": [0, 0.01], "warmup": 8}},
}


@pytest.fixture
def sf_config(tiny_config):
    """tiny_config with the policy block replaced, not merged into triangular2's."""

    def make(name, policy, **sections):
        import yaml

        path = tiny_config(name, **sections)
        data = yaml.safe_load(path.read_text())
        data["policy"] = policy
        path.write_text(yaml.safe_dump(data))
        return path

    return make


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_optimizer_trains_and_resumes_exactly(sf_config, tmp_path, case):
    from clrctl.runs.training import resume_training, start_training

    config = load_config(sf_config(case, **CASES[case], train={"epochs": 2, "eval_every": 5}))
    _, ref = start_training(config, run_dir=tmp_path / "ref")
    assert ref["status"] == "completed" and ref["final_val_acc"] > 0.5, ref
    with pytest.raises(Interrupted):
        start_training(config, run_dir=tmp_path / "cut", callbacks=(StopAt(13),))  # mid-epoch, between evaluations
    resume_training(tmp_path / "cut")
    assert (tmp_path / "cut" / "metrics.csv").read_bytes() == (tmp_path / "ref" / "metrics.csv").read_bytes()
    cut = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)
    full = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=False)
    for key in ("model", "train_model"):
        for name, value in full.get(key, {}).items():
            assert torch.equal(cut[key][name], value), (key, name)


def _val_numbers(run, weights):
    """(val_loss, val_acc) of ``weights`` (a state_dict) on the run's validation data."""
    from clrctl.engine.setup import build_setup
    from clrctl.engine.step import evaluate

    setup = build_setup(load_config(run / "config.yaml"))
    setup.model.load_state_dict(weights)
    return evaluate(setup.model, setup.data.val, setup.loss_fn)


@pytest.mark.parametrize("case", ["schedulefree_sgd", "schedulefree_adamw"])
def test_schedulefree_evaluates_and_checkpoints_the_averaged_weights(sf_config, tmp_path, case):
    from clrctl.runs.training import start_training

    config = load_config(sf_config(case, **CASES[case], train={"epochs": 2}))
    _, summary = start_training(config, run_dir=tmp_path / "run")
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=False)
    averaged = _val_numbers(tmp_path / "run", last["model"])
    assert averaged == (summary["final_val_loss"], summary["final_val_acc"])  # what the run evaluated
    assert _val_numbers(tmp_path / "run", last["train_model"])[0] != summary["final_val_loss"]  # not y
    assert _val_numbers(tmp_path / "run", best["model"])[1] == summary["best_val_acc"]


def test_averaged_weights_are_x_inside_and_the_training_state_is_untouched_outside():
    from clrctl.optim.schedulefree import AveragedWeights

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    opt = build_optimizer(OptimizerConfig(name="schedulefree_sgd"), model.parameters(), 0.1)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    class Batches:
        def batches(self, epoch):
            return iter([(x, y)] * 3)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    beta = opt.param_groups[0]["momentum"]
    expected = [p.detach().lerp(opt.state[p]["z"], 1 - 1 / beta) for p in model.parameters()]
    with AveragedWeights(opt, model, Batches())():
        for p, want in zip(model.parameters(), expected):
            assert torch.equal(p, want)
        bn = model[1]
        with torch.no_grad():
            h = model[0](x)
        assert torch.allclose(bn.running_mean, h.mean(0), atol=1e-6)  # recomputed for x, on the batches
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # bit for bit, buffers too
    assert all(g["train_mode"] for g in opt.param_groups)


def test_muon_takes_the_hidden_linear_weights_and_adamw_the_rest():
    model = build_model(ModelConfig(name="lenet"), (1, 8, 8), 10)
    names = muon_param_names(model)
    assert names == {"classifier.1.weight", "classifier.3.weight"}  # not the head (classifier.5), no conv
    cfg = OptimizerConfig(name="muon", groups=[{"name": "head", "lr_mult": 0.5}, {"name": "body"}])
    groups = torch_param_groups(build_groups(model, cfg), model, cfg)
    opt = build_optimizer(cfg, groups, 0.02)
    assert isinstance(opt, MuonAdamW) and isinstance(opt.muon, torch.optim.Muon)
    by_id = {id(p): n for n, p in model.named_parameters()}
    muon = {by_id[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    adamw = {by_id[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert muon == names and adamw == {n for n, _ in model.named_parameters()} - names
    # one LR for both halves: lr_mult x the LR, in every torch group the schedule writes
    assert {(g["name"], g["lr"]) for g in opt.param_groups} == {("body", 0.02), ("head", 0.01)}
    assert opt.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw" and opt.param_groups[0]["momentum"] == 0.95
    state = opt.state_dict()
    assert set(state["parts"]) == {"muon", "adamw"} and len(state["param_groups"]) == len(opt.param_groups)


def test_momentum_defaults_and_a_schedule_trace_need_no_extra_optimizer():
    assert OptimizerConfig(name="schedulefree_sgd").momentum == 0.9
    assert OptimizerConfig(name="muon").momentum == 0.95
    assert OptimizerConfig(name="muon", momentum=0.9).momentum == 0.9
    assert OptimizerConfig(name="sgd").momentum == 0.0
    config = validate({"optimizer": {"name": "muon"}, "policy": {"name": "one_cycle", "bounds": [0.001, 0.01]}})
    trace = preview(config.policy, config.optimizer, 10, 20)
    assert trace[0][1] == pytest.approx(0.001) and all(m == 0.95 for _, _, m in trace)  # momentum not cycled


@pytest.mark.parametrize("sections, message", [
    ({"optimizer": {"name": "schedulefree_sgd"}, "policy": {"name": "one_cycle", "bounds": [0.1, 1.0]}},
     "policy: optimizer schedulefree_sgd takes policy: fixed only (its averaging replaces a schedule), not 'one_cycle'"),
    ({"optimizer": {"name": "schedulefree_adamw"}, "policy": {"name": "cosine", "bounds": [0, 0.01]}},
     "policy: optimizer schedulefree_adamw takes policy: fixed only"),
    ({"optimizer": {"name": "schedulefree_sgd", "momentum": 0.0}, "policy": {"name": "fixed", "lr": 1.0}},
     "optimizer.momentum: schedulefree_sgd needs 0 < momentum < 1"),
    ({"optimizer": {"name": "muon"}, "policy": {"name": "one_cycle", "bounds": [0.001, 0.01], "momentum": [0.85, 0.95]}},
     "policy: optimizer muon keeps its own momentum; drop policy.momentum"),
    ({"optimizer": {"name": "mun"}}, "optimizer.name:"),
    ({"stages": [{"name": "sf", "epochs": 1, "optimizer": {"name": "schedulefree_adamw"},
                  "policy": {"name": "triangular", "bounds": [0.001, 0.01]}}], "train": {"epochs": None}},
     "stages.sf.policy: optimizer schedulefree_adamw takes policy: fixed only"),
])
def test_bad_input_is_one_line_exit_2_and_no_run_dir(cli, sf_config, tmp_path, capsys, sections, message):
    sections = dict(sections)
    cfg = sf_config("bad", sections.pop("policy", {"name": "fixed", "lr": 0.1}), **sections)
    assert cli("train", cfg, "--run-dir", tmp_path / "run", "-q") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_missing_schedulefree_is_one_line_with_the_install_command(cli, sf_config, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "schedulefree" else real(name, *a))
    cfg = sf_config("sf", **CASES["schedulefree_sgd"])
    for command in ("train", "range-test"):
        assert cli(command, cfg, "--run-dir", tmp_path / command, "-q") == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith("optimizer.name: the schedulefree package is not installed; install it with: "
                            "pip install 'clrctl[schedulefree]'") and len(err.splitlines()) == 1, err
        assert not (tmp_path / command).exists()


def test_schedulefree_range_test_evaluates_the_averaged_weights(sf_config, tmp_path, monkeypatch):
    from clrctl.optim import schedulefree as sf
    from clrctl.rangetest import sweep

    entered = []
    real = sf.AveragedWeights.__call__

    def spy(self):
        entered.append(True)
        return real(self)

    monkeypatch.setattr(sf.AveragedWeights, "__call__", spy)
    config = load_config(sf_config("sf", **CASES["schedulefree_sgd"],
                                     range_test={"steps": 20, "eval_every": 5, "start_lr": 0.01, "end_lr": 5.0}))
    result = sweep.sweep(sweep.prepare(config))
    assert len(entered) == sum("val_acc" in row for row in result.rows) > 0


def test_lr_find_with_muon_by_name_splits_the_model_too():
    from clrctl.api import _optimizer_factory

    model = build_model(ModelConfig(name="mlp", hidden=[16, 16]), (64,), 10)
    opt = _optimizer_factory("muon", model, 0.01)(model)
    by_id = {id(p): n for n, p in model.named_parameters()}
    assert {by_id[id(p)] for g in opt.muon.param_groups for p in g["params"]} == muon_param_names(model) == {
        "1.weight", "3.weight"}  # (0 flattens; 5 is the head)


def test_a_stage_that_names_muon_or_schedulefree_gets_its_momentum_default():
    config = validate({"optimizer": {"name": "sgd", "weight_decay": 0.01},
                       "stages": [{"name": "a", "epochs": 1},
                                  {"name": "b", "epochs": 1, "optimizer": {"name": "muon"},
                                   "policy": {"name": "one_cycle", "bounds": [0.001, 0.01]}},
                                  {"name": "c", "epochs": 1, "optimizer": {"name": "schedulefree_sgd"}}]})
    a, b, c = config.plan()
    assert (a.optimizer.momentum, b.optimizer.momentum, c.optimizer.momentum) == (0.0, 0.95, 0.9)
    assert b.optimizer.weight_decay == c.optimizer.weight_decay == 0.01  # the top level's keys still apply
