"""Fine-tuning (issue 8): parameter groups, per-group policies against torch, stages,
starting weights, and the range test of a stage."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
import yaml
from torch import nn
from torch.optim import lr_scheduler

from clrctl.config.schema import OptimizerConfig, PolicyConfig, load_config, validate
from clrctl.errors import ConfigError, Interrupted
from clrctl.optim.groups import build_groups, head_module, torch_param_groups
from clrctl.model.build import build_model
from clrctl.config.schema import ModelConfig
from clrctl.optim.optimizers import build_optimizer
from clrctl.optim.policies import build_schedule, initial_lr
from clrctl.engine.callbacks import StopAt
from clrctl.track.reporter import Reporter

MULTS = (1.0, 0.1)


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# -- groups ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, shape, head", [
    ("mlp", (64,), "3"), ("lenet", (1, 8, 8), "classifier.5"), ("resnet20", (3, 8, 8), "fc"),
    ("torchvision:resnet18", (3, 32, 32), "fc"), ("torchvision:mobilenet_v3_small", (3, 32, 32), "classifier.3"),
])
def test_builtin_and_torchvision_models_have_body_and_head(name, shape, head):
    model = build_model(ModelConfig(name=name, hidden=[8]), shape, 10)
    assert head_module(model) == head
    body, top = build_groups(model, OptimizerConfig())
    assert (body.name, top.name) == ("body", "head")
    assert {n for n, _ in top.params} == {f"{head}.weight", f"{head}.bias"}
    assert body.numel + top.numel == sum(p.numel() for p in model.parameters())


def test_first_matching_group_wins_and_the_rest_is_rest():
    model = build_model(ModelConfig(name="lenet"), (1, 8, 8), 10)
    cfg = OptimizerConfig(groups=[{"name": "convs", "params": ["features.*"], "lr_mult": 0.01},
                                  {"name": "all-weights", "params": ["*.weight"], "lr_mult": 0.1}])
    groups = {g.name: g for g in build_groups(model, cfg)}
    assert list(groups) == ["convs", "all-weights", "rest"]
    assert groups["convs"].params and all(n.startswith("features.") for n, _ in groups["convs"].params)
    assert {n for n, _ in groups["all-weights"].params} == {n for n, _ in model.named_parameters()
                                                            if n.startswith("classifier.") and n.endswith("weight")}
    assert {n for n, _ in groups["rest"].params} == {n for n, _ in model.named_parameters()
                                                     if n.startswith("classifier.") and n.endswith("bias")}


def test_bad_groups_are_one_line_naming_the_key():
    model = build_model(ModelConfig(name="lenet"), (1, 8, 8), 10)
    with pytest.raises(ConfigError, match=r"^optimizer.groups.0.params: \['encoder\.\*'\] match no parameter"):
        build_groups(model, OptimizerConfig(groups=[{"name": "enc", "params": ["encoder.*"]}]))
    dead = OptimizerConfig(groups=[{"name": "all", "params": ["*"]}, {"name": "head", "params": ["classifier.5.*"]}])
    with pytest.raises(ConfigError, match=r"^optimizer.groups.1.params: group 'head' is dead.*\(all\)"):
        build_groups(model, dead)


def test_no_decay_exempts_biases_and_norm_weights():
    model = build_model(ModelConfig(name="resnet20"), (3, 8, 8), 10)
    cfg = OptimizerConfig(weight_decay=5e-4, no_decay=["bias", "norm"])
    groups = torch_param_groups(build_groups(model, cfg), model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        exempt = all(names[id(p)].endswith("bias") or ".bn" in names[id(p)] or names[id(p)].startswith("bn")
                     for p in group["params"])
        assert group["weight_decay"] == (0.0 if exempt else 5e-4), [names[id(p)] for p in group["params"]]
    # body and head train alike here: one torch group decays, one does not
    assert [g["name"] for g in groups] == ["body+head", "body+head"] and len(groups) == 2


# -- every policy per group, against torch -----------------------------------------------------------


def _two_group_optimizer(lr=0.1, momentum=0.9):
    params = [{"params": [nn.Parameter(torch.zeros(1))], "lr_mult": m, "name": f"g{i}"} for i, m in enumerate(MULTS)]
    return build_optimizer(OptimizerConfig(momentum=momentum), params, lr)


def _ours(policy: PolicyConfig, steps: int, spe: int = 10):
    opt_cfg = OptimizerConfig(momentum=0.9)
    optimizer = _two_group_optimizer(initial_lr(policy))
    return _trace(optimizer, build_schedule(policy, opt_cfg, optimizer, spe, steps), steps)


def _torch(make, steps: int, lrs):
    """torch's own scheduler ``make(optimizer)`` on an optimizer whose groups start at ``lrs``."""
    optimizer = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs], momentum=0.9)
    return _trace(optimizer, make(optimizer), steps)


def _trace(optimizer, schedule, steps: int):
    """(lr, momentum) of every group at every step, stepping the optimizer then the schedule."""
    trace = []
    for _ in range(steps):
        trace.append([(g["lr"], g["momentum"]) for g in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    return trace


B, M = 0.01, 0.1
CASES = {
    "triangular": (dict(name="triangular", bounds=(B, M), stepsize=7),
                   lambda o: lr_scheduler.CyclicLR(o, [B * m for m in MULTS], [M * m for m in MULTS], step_size_up=7,
                                                   cycle_momentum=False), [B * m for m in MULTS]),
    "triangular2": (dict(name="triangular2", bounds=(B, M), stepsize=5, momentum=(0.8, 0.9)),
                    lambda o: lr_scheduler.CyclicLR(o, [B * m for m in MULTS], [M * m for m in MULTS], step_size_up=5,
                                                    mode="triangular2", base_momentum=0.8, max_momentum=0.9),
                    [B * m for m in MULTS]),
    "exp_range": (dict(name="exp_range", bounds=(B, M), stepsize=5, gamma=0.99),
                  lambda o: lr_scheduler.CyclicLR(o, [B * m for m in MULTS], [M * m for m in MULTS], step_size_up=5,
                                                  mode="exp_range", gamma=0.99, cycle_momentum=False),
                  [B * m for m in MULTS]),
    "one_cycle": (dict(name="one_cycle", bounds=(B, M)),
                  lambda o: lr_scheduler.OneCycleLR(o, [M * m for m in MULTS], total_steps=40, div_factor=M / B),
                  [M * m for m in MULTS]),
    "step": (dict(name="step", lr=M, milestones=[10, 25]),
             lambda o: lr_scheduler.MultiStepLR(o, [10, 25], gamma=0.1), [M * m for m in MULTS]),
    "fixed": (dict(name="fixed", lr=B), lambda o: lr_scheduler.LambdaLR(o, lambda _: 1.0), [B * m for m in MULTS]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_group_follows_torchs_scheduler_given_per_group_lists(case):
    policy, make, lrs = CASES[case]
    ours, ref = _ours(PolicyConfig(**policy), 40), _torch(make, 40, lrs)
    for step, (got, want) in enumerate(zip(ours, ref)):
        for (lr, mom), (ref_lr, ref_mom) in zip(got, want):
            assert lr == pytest.approx(ref_lr, rel=1e-12, abs=1e-15), (case, step)
            assert mom == pytest.approx(ref_mom, rel=1e-12), (case, step)


@pytest.mark.parametrize("case", ["cosine", "sgdr"])
def test_cosine_policies_per_group_equal_torch_with_that_groups_bounds(case):
    """torch's cosine classes take one eta_min, so each group is checked against torch on its own
    optimizer with the bounds lr_mult x [base, max]."""
    policy = PolicyConfig(name=case, bounds=(B, M), stepsize=6, t_mult=2)
    ours = _ours(policy, 40)
    for g, mult in enumerate(MULTS):
        if case == "cosine":
            make = lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=40, eta_min=B * mult)  # noqa: E731
        else:
            make = lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=6, T_mult=2, eta_min=B * mult)  # noqa: E731
        ref = _torch(make, 40, [M * mult])
        assert [s[g][0] for s in ours] == pytest.approx([s[0][0] for s in ref], rel=1e-12)


def test_group_with_mult_one_is_bit_identical_to_the_single_group_schedule():
    policy = PolicyConfig(name="one_cycle", bounds=(B, M))
    single = _torch(lambda o: lr_scheduler.OneCycleLR(o, M, total_steps=40, div_factor=M / B), 40, [M])
    assert [s[0][0] for s in _ours(policy, 40)] == [s[0][0] for s in single]


# -- stages --------------------------------------------------------------------------------------


STAGES = [
    {"name": "head-only", "epochs": 1, "freeze": ["body"], "policy": {"name": "one_cycle", "bounds": [0.01, 0.1]}},
    {"name": "all", "epochs": 1, "policy": {"name": "one_cycle", "bounds": [0.002, 0.02]}},
]


@pytest.fixture
def staged(tiny_config):
    return tiny_config("staged", stages=STAGES, train={"epochs": None, "eval_every": 5},
                       optimizer={"name": "sgd", "momentum": 0.9,
                                  "groups": [{"name": "body", "params": ["1.*"], "lr_mult": 0.1},
                                             {"name": "head", "params": ["3.*"]}]})


def test_stages_run_in_one_directory_with_one_step_counter(cli, staged, tmp_path):
    assert cli("train", staged, "--run-dir", tmp_path / "run", "-q") == 0
    metrics = rows(tmp_path / "run" / "metrics.csv")
    spe = 22  # 1347 digits / batch 64
    assert [int(r["step"]) for r in metrics] == list(range(2 * spe))
    assert [r["stage"] for r in metrics] == ["head-only"] * spe + ["all"] * spe
    assert [r["stage"] for r in rows(tmp_path / "run" / "epochs.csv")] == ["head-only", "all"]
    # each stage runs its own one_cycle from its own start, between its own bounds
    assert float(metrics[0]["lr"]) == pytest.approx(0.01) and float(metrics[spe]["lr"]) == pytest.approx(0.002)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [(s["name"], s["steps"]) for s in summary["stages"]] == [("head-only", spe), ("all", spe)]
    assert summary["stages"][1]["final_val_acc"] == summary["final_val_acc"]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [(g["name"], g["lr_mult"], g["parameters"]) for g in info["groups"]] == [
        ("body", 0.1, 64 * 32 + 32), ("head", 1.0, 32 * 10 + 10)]


def test_a_frozen_group_is_bit_identical_after_its_frozen_stage(staged, tmp_path):
    from clrctl.runs.rundir import RunDir
    from clrctl.engine.setup import build_setup
    from clrctl.runs.lifecycle import TrainingRun

    setup = build_setup(load_config(staged))
    before = {k: v.clone() for k, v in setup.model.state_dict().items()}
    after_epoch = {}

    class Snapshot(Reporter):
        def epoch(self, row):
            after_epoch[row["epoch"]] = {k: v.clone() for k, v in setup.model.state_dict().items()}

    run = RunDir.create(tmp_path, "x", tmp_path / "run")
    run.start("train", 0, "cpu")
    TrainingRun(setup, run, Snapshot()).run_all()
    head_only = after_epoch[1]
    assert torch.equal(head_only["1.weight"], before["1.weight"])  # body: frozen, untouched
    assert torch.equal(head_only["1.bias"], before["1.bias"])
    assert not torch.equal(head_only["3.weight"], before["3.weight"])  # the head trained
    assert not torch.equal(after_epoch[2]["1.weight"], before["1.weight"])  # the body trains in stage 2


@pytest.mark.parametrize("stop_at", [22, 30])  # the stage boundary; inside stage 2
def test_interrupt_at_the_stage_boundary_or_inside_stage_2_then_resume_equals_uninterrupted(staged, tmp_path,
                                                                                                 stop_at, reference_run):
    from clrctl.runs.training import resume_training, start_training

    config = load_config(staged)
    reference = reference_run(staged)  # (the same run as start_training(config): trained once for both)
    with pytest.raises(Interrupted):
        start_training(config, run_dir=tmp_path / "cut", callbacks=(StopAt(stop_at),))
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["steps"] == stop_at
    resume_training(tmp_path / "cut")
    assert (tmp_path / "cut" / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    ref, cut = (json.loads((d / "summary.json").read_text()) for d in (reference, tmp_path / "cut"))
    assert cut["stages"] == ref["stages"]


@pytest.mark.parametrize("change, message", [
    ({"train": {"epochs": 3}}, "train: with stages, each stage sets epochs: or steps:, not train.epochs"),
    ({"stages": [{**STAGES[0], "freeze": ["bdy"]}]}, "stages.head-only.freeze: unknown group 'bdy' (did you mean 'body'?)"),
    ({"stages": [{**STAGES[0], "freeze": ["body", "head"]}]}, "stages.head-only.freeze: freezes every group"),
    ({"optimizer": {"groups": [{"name": "x", "params": ["*"], "lr_mult": 0}]}, "stages": STAGES[1:]},
     "optimizer.groups.0.lr_mult:"),
    ({"optimizer": {"groups": [{"name": "x", "params": ["nothing.*"]}]}, "stages": STAGES[1:]},
     "optimizer.groups.0.params: ['nothing.*'] match no parameter"),
    ({"model": {"name": "mlp", "weights": "missing.pt"}}, "model.weights: no such file or run directory: missing.pt"),
    ({"stages": [{**STAGES[0], "policy": {"name": "one_cycle", "bounds": [0.1, 0.01]}}]},
     "stages.head-only.policy.bounds: base_lr must be < max_lr"),
])
def test_bad_fine_tuning_input_is_one_line_exit_2_and_no_run_dir(cli, tiny_config, tmp_path, capsys, change, message):
    sections = {"stages": STAGES, "train": {"epochs": None, "eval_every": 5}}
    sections.update(change)
    if "train" in change:
        sections["train"] = {**sections["train"], **change["train"]}
    cfg = tiny_config("bad", **sections)
    assert cli("train", cfg, "--run-dir", tmp_path / "run", "-q") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


# -- weights -------------------------------------------------------------------------------------------


def test_weights_from_a_run_reinitialise_a_new_head_and_record_it(cli, tiny_config, tmp_path):
    pre = tiny_config("pre", dataset={"name": "digits", "batch_size": 64, "classes": [0, 1, 2, 3, 4, 5]})
    assert cli("train", pre, "--run-dir", tmp_path / "pre", "-q") == 0
    fine = tiny_config("fine", dataset={"name": "digits", "batch_size": 64, "classes": [6, 7, 8, 9]},
                       model={"name": "mlp", "hidden": [32], "weights": str(tmp_path / "pre")})
    assert cli("train", fine, "--run-dir", tmp_path / "fine", "-q") == 0
    info = json.loads((tmp_path / "fine" / "run.json").read_text())
    assert info["weights"]["source"].endswith("checkpoints/best.pt")
    assert info["weights"]["reinitialised"] == ["3.weight", "3.bias"]


def test_weights_are_loaded_exactly_where_shapes_fit(tiny_config, tmp_path):
    from clrctl.engine.setup import build_setup

    donor = build_model(ModelConfig(name="mlp", hidden=[32]), (64,), 10)
    torch.save(donor.state_dict(), tmp_path / "w.pt")
    setup = build_setup(load_config(tiny_config(model={"name": "mlp", "hidden": [32], "weights": str(tmp_path / "w.pt")})))
    assert all(torch.equal(v, donor.state_dict()[k]) for k, v in setup.model.state_dict().items())
    assert setup.weights["reinitialised"] == []


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "model.weights: cannot read"),
    ("other-arch", "does not fit this model (missing 1.weight"),
])
def test_corrupt_or_foreign_weights_are_refused(cli, tiny_config, tmp_path, capsys, content, message):
    path = tmp_path / "w.pt"
    if content == "other-arch":
        torch.save(build_model(ModelConfig(name="lenet"), (1, 8, 8), 10).state_dict(), path)
    else:
        path.write_bytes(content)
    cfg = tiny_config(model={"name": "mlp", "hidden": [32], "weights": str(path)})
    assert cli("train", cfg, "--run-dir", tmp_path / "run", "-q") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_torchvision_named_weights_load_from_the_cache_or_say_where_to_put_them(monkeypatch, tmp_path):
    from clrctl.compat import import_torchvision
    from clrctl.model.weights import load_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network unreachable")))
    cfg = ModelConfig(name="torchvision:resnet18", args={"weights": "DEFAULT"})
    model = build_model(cfg, (1, 8, 8), 10)
    with pytest.raises(ConfigError, match=r"model.args.weights: ResNet18_Weights.IMAGENET1K_V1 is not in .* put it at"):
        load_weights(model, cfg)
    weights = import_torchvision().models.ResNet18_Weights.IMAGENET1K_V1
    cached = tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(weights.url)
    cached.parent.mkdir(parents=True)
    imagenet = import_torchvision().models.resnet18()
    torch.save(imagenet.state_dict(), cached)
    report = load_weights(model, cfg)
    assert report["reinitialised"] == ["conv1.weight", "fc.weight", "fc.bias"]  # 1 channel in, 10 classes out
    assert torch.equal(model.layer1[0].conv1.weight, imagenet.layer1[0].conv1.weight)


# -- range test of a stage ---------------------------------------------------------------------------


def test_range_test_of_a_stage_sweeps_its_groups_and_fills_its_bounds(cli, staged, tmp_path):
    run = tmp_path / "rt"
    assert cli("range-test", staged, "--stage", "all", "--run-dir", run, "-q",
               "range_test.steps=60", "range_test.eval_every=5") == 0
    info = json.loads((run / "run.json").read_text())
    assert info["stage"] == "all"
    suggested = yaml.safe_load((run / "suggested.yaml").read_text())
    bounds = suggested["stages"][1]["policy"]["bounds"]
    summary = json.loads((run / "summary.json").read_text())["suggestion"]
    assert bounds == [float(f"{summary['base_lr']:.4g}"), float(f"{summary['max_lr']:.4g}")]
    assert suggested["stages"][0]["policy"]["bounds"] == [0.01, 0.1]
    validate(suggested)  # ready for clrctl train


def test_range_test_of_a_frozen_stage_leaves_the_frozen_group_alone(staged):
    from clrctl.engine import strategy
    from clrctl.rangetest import sweep as rt

    setup = rt.prepare(load_config(staged, ["range_test.steps=20"]), stage="head-only")
    seen = {}
    real = strategy.forward_backward

    def spy(model, optimizer, *args, **kwargs):
        seen["groups"] = [(g["name"], g["lr"] / g["lr_mult"]) for g in optimizer.param_groups]
        seen["body"] = model[1].weight.requires_grad
        return real(model, optimizer, *args, **kwargs)

    strategy.forward_backward, saved = spy, strategy.forward_backward
    try:
        rt.sweep(setup)
    finally:
        strategy.forward_backward = saved
    assert [name for name, _ in seen["groups"]] == ["head"] and seen["body"] is False
    with pytest.raises(ConfigError, match=r"--stage 'nope': no such stage \(stages: head-only, all\)"):
        rt.prepare(load_config(staged), stage="nope")


def test_body_and_head_may_leave_out_params_to_mean_the_builtin_split():
    model = build_model(ModelConfig(name="mlp", hidden=[16, 16]), (64,), 4)
    cfg = OptimizerConfig(groups=[{"name": "body", "lr_mult": 0.1}, {"name": "head"}])
    body, head = build_groups(model, cfg)
    assert (body.name, body.lr_mult, head.name) == ("body", 0.1, "head")
    assert [n for n, _ in head.params] == ["5.weight", "5.bias"]
    assert [n for n, _ in body.params] == ["1.weight", "1.bias", "3.weight", "3.bias"]
    with pytest.raises(ConfigError, match=r"optimizer.groups.0.params: group 'convs' needs params"):
        validate({"optimizer": {"groups": [{"name": "convs", "lr_mult": 0.1}]}})


def test_preview_and_validate_show_every_stage_and_group(cli, staged, capsys, tmp_path):
    assert cli("preview", staged, "--rows", "5", "--plot", tmp_path / "p.png") == 0
    out = capsys.readouterr().out
    assert "2 stages: 44 steps (22 per epoch)" in out
    assert "stage head-only: one_cycle, 22 steps (0.01–0.1, frozen: body)" in out
    assert "lr body" in out and "lr head" in out and "frozen" in out
    assert (tmp_path / "p.png").stat().st_size > 0
    assert cli("validate", staged) == 0
    out = capsys.readouterr().out
    assert "groups: body (2,080 parameters, lr x0.1), head (330 parameters, lr x1)" in out
    assert "stage all: one_cycle, 22 steps (0.002–0.02)" in out


# -- end to end: a torchvision model over an image folder; kill -9 inside stage 2 ----------------------


def _image_folder(root):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog", "fox"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_torchvision_model_on_an_image_folder_fine_tunes_from_a_state_dict(cli, tiny_config, tmp_path):
    from clrctl.compat import import_torchvision

    _image_folder(tmp_path / "images")
    imagenet_like = import_torchvision().models.resnet18(num_classes=1000)
    torch.save(imagenet_like.state_dict(), tmp_path / "resnet18.pt")
    cfg = tiny_config(
        "tv", dataset={"name": "imagefolder", "root": str(tmp_path / "images"), "image_size": 16, "batch_size": 4,
                       "num_workers": 0, "val_fraction": 0.5, "drop_last": True},  # no 1-sample BatchNorm batch
        model={"name": "torchvision:resnet18", "weights": str(tmp_path / "resnet18.pt")},
        optimizer={"name": "sgd", "momentum": 0.9, "groups": [{"name": "body", "lr_mult": 0.1}, {"name": "head"}]},
        train={"epochs": None, "eval_every": 2},
        stages=[{"name": "head", "steps": 2, "freeze": ["body"], "policy": {"name": "fixed", "lr": 0.01}},
                {"name": "all", "steps": 2, "policy": {"name": "one_cycle", "bounds": [0.001, 0.01]}}])
    assert cli("train", cfg, "--run-dir", tmp_path / "run", "-q") == 0
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["weights"]["reinitialised"] == ["fc.weight", "fc.bias"]  # 3 classes, not 1000
    assert [g["name"] for g in info["groups"]] == ["body", "head"]
    assert [r["stage"] for r in rows(tmp_path / "run" / "metrics.csv")] == ["head", "head", "all", "all"]


@pytest.mark.slow  # the same, in-process: the test below (a real kill -9: test_robustness's)
def test_kill_9_inside_stage_2_then_resume_equals_uninterrupted(cli, tiny_config, tmp_path, monkeypatch, hold):
    import subprocess
    import sys
    import time
    from pathlib import Path

    tests = Path(__file__).parent
    monkeypatch.syspath_prepend(str(tests))
    cfg = tiny_config("slow-stages", model={"name": "slow_model:build", "args": {"delay_s": 0.01}},
                      train={"epochs": None, "eval_every": 5, "log_every": 5, "checkpoint_every": 0},
                      stages=[{**STAGES[0], "freeze": ["body"]}, {**STAGES[1], "epochs": 2}])
    assert cli("train", cfg, "--run-dir", tmp_path / "ref", "-q") == 0
    held = hold(55)  # (not past step 55 before the kill)
    env = {**os.environ, "PYTHONPATH": f"{tests}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **held.env}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "clrctl", "train", str(cfg), "--run-dir", str(killed), "-q"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # stage 2 is epochs 2-3: wait for epoch 2's checkpoint, then part of epoch 3
    while not (killed / "epochs.csv").exists() or len(rows(killed / "epochs.csv")) < 2 \
            or len(rows(killed / "metrics.csv")) < 50:
        assert proc.poll() is None and time.monotonic() < deadline, "run ended or stalled before stage 2"
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=30)
    held.release()
    assert cli("train", "--resume", killed, "-q") == 0
    assert (killed / "metrics.csv").read_bytes() == (tmp_path / "ref" / "metrics.csv").read_bytes()
    ref, got = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "ref", killed))
    assert got["stages"] == ref["stages"]


def test_a_run_dying_inside_stage_2_then_resume_equals_uninterrupted(tiny_config, tmp_path):
    """The test above in-process: what a kill -9 leaves is the run directory as it is on disk
    at that moment, so a copy of it taken mid-step-50 (stage 2 is epochs 2-3, epoch 2's
    checkpoint is done) is a killed run; the run itself goes on to be the uninterrupted one."""
    from conftest import KilledAt
    from clrctl.runs.training import resume_training, start_training

    cfg = tiny_config("stages", train={"epochs": None, "eval_every": 5, "log_every": 5, "checkpoint_every": 0},
                      stages=[{**STAGES[0], "freeze": ["body"]}, {**STAGES[1], "epochs": 2}])
    ref, killed = tmp_path / "ref", tmp_path / "killed"

    start_training(load_config(cfg), run_dir=ref, callbacks=(KilledAt(50, ref, killed),))  # (inside stage 2, epoch 2's checkpoint written)
    assert json.loads((killed / "run.json").read_text())["status"] == "running"
    assert len(rows(killed / "epochs.csv")) == 2
    resume_training(killed)
    assert (killed / "metrics.csv").read_bytes() == (ref / "metrics.csv").read_bytes()
    ref_summary, got = (json.loads((d / "summary.json").read_text()) for d in (ref, killed))
    assert got["stages"] == ref_summary["stages"]
    assert json.loads((killed / "run.json").read_text())["resumed"][0]["step"] == 44  # from epoch 2's checkpoint


def test_a_stage_takes_its_bounds_from_a_range_test_run(cli, staged, tmp_path):
    from clrctl.runs.bounds import resolve_bounds_from

    assert cli("range-test", staged, "--stage", "all", "--run-dir", tmp_path / "rt", "-q",
               "range_test.steps=60", "range_test.eval_every=5") == 0
    suggestion = json.loads((tmp_path / "rt" / "summary.json").read_text())["suggestion"]
    config = resolve_bounds_from(load_config(staged, [f"stages.1.policy.bounds={{from: {tmp_path / 'rt'}}}"]))
    assert config.stage("all").policy.bounds == (suggestion["base_lr"], suggestion["max_lr"])
    assert config.stage("head-only").policy.bounds == (0.01, 0.1)
    with pytest.raises(ConfigError, match=r"^stages.all.policy.bounds.from: .*nowhere is not a finished run"):
        resolve_bounds_from(load_config(staged, [f"stages.1.policy.bounds={{from: {tmp_path / 'nowhere'}}}"]))
