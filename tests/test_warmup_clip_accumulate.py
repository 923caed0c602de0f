"""Training extras (issue 19, SPEC "Training extras"): ``policy.warmup`` for any policy,
``train.clip_grad_norm`` and ``train.accumulate`` — traces against torch, resume inside and
just after a warmup, accumulation against one big batch, bad input."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from clrctl.config.schema import OptimizerConfig, PolicyConfig
from clrctl.engine.callbacks import StopAt
from clrctl.engine.step import StepExtras, accumulated_step, forward_backward
from clrctl.errors import Interrupted
from clrctl.optim.policies import preview

W = 6  # warmup steps
STEPS = 40


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def torch_warmup_then(make, first_lr: float, start: float, steps: int = STEPS, momentum: float = 0.9):
    """torch's LinearLR over W steps from ``start`` x ``first_lr``, then ``make(optimizer)`` —
    the policy's own torch class — over the remaining steps (its own optimizer, from its step 0)."""
    warm_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=first_lr, momentum=momentum)
    warm = lr_scheduler.LinearLR(warm_opt, start_factor=start, end_factor=1.0, total_iters=W)
    out = []
    for _ in range(W):
        out.append(warm_opt.param_groups[0]["lr"])
        warm_opt.step()
        warm.step()
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=first_lr, momentum=momentum)
    sched = make(opt, steps - W)
    for _ in range(steps - W):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


CASES = [  # (policy, the policy's torch class over n steps, its first LR)
    ({"name": "cosine", "bounds": [0.01, 0.1]},
     lambda o, n: lr_scheduler.CosineAnnealingLR(o, T_max=n, eta_min=0.01), 0.1),
    ({"name": "one_cycle", "bounds": [0.004, 0.1]},
     lambda o, n: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=n, div_factor=25.0, cycle_momentum=False),
     0.004),
    ({"name": "triangular", "bounds": [0.01, 0.1], "stepsize": 5},
     lambda o, n: lr_scheduler.CyclicLR(o, 0.01, 0.1, step_size_up=5, cycle_momentum=False), 0.01),
    ({"name": "sgdr", "bounds": [0.01, 0.1], "stepsize": 7},
     lambda o, n: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=7, eta_min=0.01), 0.1),
    ({"name": "linear", "bounds": [0.0, 0.1]},
     lambda o, n: lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=n), 0.1),
    ({"name": "step", "lr": 0.1, "milestones": [10, 20]},
     lambda o, n: lr_scheduler.MultiStepLR(o, milestones=[10, 20], gamma=0.1), 0.1),
    ({"name": "fixed", "lr": 0.05}, lambda o, n: lr_scheduler.LambdaLR(o, lambda t: 1.0), 0.05),
]


@pytest.mark.parametrize("policy, make, first", CASES, ids=[c[0]["name"] for c in CASES])
def test_warmup_equals_torch_linearlr_then_the_policys_class(policy, make, first):
    rows_ = preview(PolicyConfig(**policy, warmup=W, warmup_start=0.1), OptimizerConfig(momentum=0.9), 10, STEPS)
    assert [lr for _, lr, _ in rows_] == pytest.approx(torch_warmup_then(make, first, 0.1), rel=1e-12, abs=1e-15)


def test_warmup_from_zero_in_epochs_and_a_cycled_momentum_held_at_its_first_value():
    rows_ = preview(PolicyConfig(name="one_cycle", bounds=[0.004, 0.1], warmup="0.5 epochs"),
                    OptimizerConfig(momentum=0.9), 12, STEPS)
    lrs, moms = [lr for _, lr, _ in rows_], [m for _, _, m in rows_]
    assert lrs[:W + 1] == pytest.approx([0.004 * t / W for t in range(W + 1)], abs=1e-15)
    assert moms[:W + 1] == [0.95] * (W + 1)  # one_cycle's first momentum, during the whole ramp
    assert moms[W + 1] < 0.95  # then cycled, as one_cycle over the remaining steps


def test_without_warmup_the_schedule_is_unchanged():
    policy = {"name": "triangular2", "bounds": [0.01, 0.1], "stepsize": 5}
    assert preview(PolicyConfig(**policy), OptimizerConfig(), 10, STEPS) == \
        preview(PolicyConfig(**policy, warmup_start=0.5), OptimizerConfig(), 10, STEPS)


# -- resume ----------------------------------------------------------------------------


STAGES = [
    {"name": "head-only", "epochs": 1, "freeze": ["body"],
     "policy": {"name": "cosine", "bounds": [0.01, 0.1], "warmup": 8}},
    {"name": "all", "epochs": 1, "policy": {"name": "one_cycle", "bounds": [0.002, 0.02], "warmup": 5,
                                            "warmup_start": 0.2}},
]
GROUPS = {"name": "sgd", "momentum": 0.9, "groups": [{"name": "body", "params": ["1.*"], "lr_mult": 0.1},
                                                    {"name": "head", "params": ["3.*"]}]}


@pytest.fixture(scope="module")
def warm_ref(tmp_path_factory):
    """The staged warmup config and its uninterrupted run (trained once for every cut)."""
    import yaml

    from clrctl.config.schema import load_config
    from clrctl.runs.training import start_training

    root = tmp_path_factory.mktemp("warm")
    (root / "warm.yaml").write_text(yaml.safe_dump({
        "name": "warm", "seed": 0, "device": "cpu", "dataset": {"name": "digits", "batch_size": 64},
        "model": {"name": "mlp", "hidden": [32]}, "optimizer": GROUPS, "stages": STAGES,
        "train": {"eval_every": 5, "clip_grad_norm": 0.5}}))
    config = load_config(root / "warm.yaml")
    start_training(config, run_dir=root / "ref")
    return config, root / "ref"


@pytest.mark.parametrize("stop_at", [3, 9, 25, 28])  # inside and just after each stage's warmup
def test_resume_inside_and_just_after_a_warmup_equals_the_uninterrupted_run(warm_ref, tmp_path, stop_at):
    """Stage 1 (22 steps, warmup 8) and stage 2 (warmup 5 from step 22), groups at lr_mult 1
    and 0.1, clipping on: the LR trace and every metric of the resumed run are the
    uninterrupted run's, byte for byte."""
    from clrctl.runs.training import resume_training, start_training

    config, ref = warm_ref
    with pytest.raises(Interrupted):
        start_training(config, run_dir=tmp_path / "cut", callbacks=(StopAt(stop_at),))
    resume_training(tmp_path / "cut")
    assert (tmp_path / "cut" / "metrics.csv").read_bytes() == (ref / "metrics.csv").read_bytes()
    cut, whole = ([{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows(d / "epochs.csv")]
                  for d in (tmp_path / "cut", ref))
    assert cut == whole
    metrics = rows(ref / "metrics.csv")
    lrs = [float(r["lr"]) for r in metrics]
    assert lrs[:9] == pytest.approx([0.1 * t / 8 for t in range(9)])  # to cosine's first LR, max_lr
    assert lrs[22:28] == pytest.approx([0.002 * (0.2 + 0.8 * t / 5) for t in range(6)])  # one_cycle's: base_lr
    assert all(r["grad_norm"] for r in metrics)


def test_a_warmup_applies_per_group_through_lr_mult(tiny_config, tmp_path, cli):
    cfg = tiny_config("mult", optimizer=GROUPS, policy={"name": "sgdr", "bounds": [0.01, 0.1], "warmup": 4},
                      train={"epochs": 1, "eval_every": 5})
    from clrctl.config.schema import load_config
    from clrctl.engine.loop import Loop
    from clrctl.engine.setup import build_setup
    from clrctl.engine.strategy import Strategy

    loop = Loop(build_setup(load_config(cfg)), Strategy())
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in loop.stage.optimizer.param_groups])
        loop.stage.schedule.step()
    for t, lrs in enumerate(seen[:5]):
        assert sorted(lrs) == pytest.approx(sorted([0.1 * t / 4 * 0.1, 0.1 * t / 4]))


# -- accumulation and clipping ----------------------------------------------------------


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


@pytest.mark.parametrize("n", [12, 10, 3])  # divides by 4; does not (a last, partial batch); fewer than 4
def test_accumulated_gradient_is_the_whole_batch_gradient(n):
    x, y = torch.randn(n, 8), torch.randint(0, 3, (n,))
    grads = []
    for extras in (None, StepExtras(None, 4)):
        model = _model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        if extras is None:
            loss, _ = forward_backward(model, optimizer, x, y, nn.CrossEntropyLoss())
        else:
            total, logits = accumulated_step(model, optimizer, x, y, nn.CrossEntropyLoss(), extras)
            loss = total / n
            assert logits.shape == (n, 3)
        grads.append(([p.grad.clone() for p in model.parameters()], float(loss)))
    for a, b in zip(grads[0][0], grads[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert grads[1][1] == pytest.approx(grads[0][1], rel=1e-6)


def test_clipping_clips_to_the_norm_and_keeps_the_pre_clip_norm_on_the_device():
    x, y = torch.randn(16, 8) * 10, torch.randint(0, 3, (16,))
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    extras = StepExtras(0.01, 1, keep_norms=True)
    accumulated_step(model, optimizer, x, y, nn.CrossEntropyLoss(), extras)
    (norm,) = extras.norms
    assert isinstance(norm, torch.Tensor) and float(norm) > 0.01
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert float(clipped) == pytest.approx(0.01, rel=1e-4)


def test_accumulate_4_gives_the_metrics_of_accumulate_1(cli, tiny_config, tmp_path):
    """An MLP (no BatchNorm), batch 64 (digits' last batch: 3 samples): the same run within float
    tolerance; with clipping on, both have the same grad_norm column."""
    out = {}
    for k in (1, 4):
        cfg = tiny_config(f"acc{k}", train={"epochs": 2, "eval_every": 5, "accumulate": k, "clip_grad_norm": 5.0})
        assert cli("train", cfg, "--run-dir", tmp_path / f"k{k}", "-q") == 0
        out[k] = rows(tmp_path / f"k{k}" / "metrics.csv")
    assert len(out[1]) == len(out[4]) == 44
    for a, b in zip(out[1], out[4]):
        assert a.keys() == b.keys() and a["lr"] == b["lr"]
        for key in ("loss", "val_loss", "val_acc", "grad_norm"):
            if a[key]:
                assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-6), key


def test_no_extras_no_grad_norm_column(cli, tiny_config, tmp_path):
    assert cli("train", tiny_config(train={"epochs": 1}), "--run-dir", tmp_path / "run", "-q") == 0
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert header == "step,epoch,lr,momentum,loss,val_loss,val_acc"


def test_fp16_clipping_unscales_first():
    """Under a (CPU) float16 GradScaler (scale 2^16) the norm is that of the true gradients."""
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    norms = []
    for enabled in (False, True):
        model = _model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        scaler = torch.amp.GradScaler("cpu", enabled=enabled, init_scale=2.0**16)
        extras = StepExtras(100.0, 2, keep_norms=True)
        accumulated_step(model, optimizer, x, y, nn.CrossEntropyLoss(), extras, scaler)
        norms.append(float(extras.norms[0]))
    assert norms[1] == pytest.approx(norms[0], rel=1e-2)


# -- bad input and descriptions ------------------------------------------------------------


@pytest.mark.parametrize("sections, message", [
    ({"train": {"accumulate": 0}}, "train.accumulate: Input should be greater than or equal to 1"),
    ({"train": {"accumulate": 5}}, "train.accumulate: dataset.batch_size 64 does not divide by train.accumulate 5"),
    ({"train": {"clip_grad_norm": 0}}, "train.clip_grad_norm: Input should be greater than 0"),
    ({"train": {"clip_grad_norm": -1.0}}, "train.clip_grad_norm: Input should be greater than 0"),
    ({"policy": {"warmup": 0}}, "policy.warmup: must be positive"),
    ({"policy": {"warmup": -3}}, "policy.warmup: must be positive"),
    ({"policy": {"warmup": "2 epochs"}},
     "policy.warmup: 44 steps is not shorter than the run (44 steps)"),
    ({"policy": {"warmup": 3, "warmup_start": -0.1}},
     "policy.warmup_start: Input should be greater than or equal to 0"),
    ({"stages": [{"name": "a", "steps": 10, "policy": {"warmup": 10}}, {"name": "b", "steps": 5}],
      "train": {"epochs": None}}, "stages.a.policy.warmup: 10 steps is not shorter than the stage (10 steps)"),
])
def test_bad_input_is_one_line_naming_the_key_exit_2_no_run_dir(cli, tiny_config, tmp_path, capsys, sections, message):
    cfg = tiny_config("bad", **sections)
    assert cli("train", cfg, "--run-dir", tmp_path / "run", "-q") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_validate_and_preview_describe_what_is_on(cli, tiny_config, capsys):
    cfg = tiny_config(policy={"name": "cosine", "bounds": [0.01, 0.1], "warmup": "0.5 epochs", "warmup_start": 0.1},
                      train={"epochs": 2, "accumulate": 4, "clip_grad_norm": 1.0})
    assert cli("validate", cfg) == 0
    out = capsys.readouterr().out
    assert "warmup 11 steps from 0.1 x the first LR" in out
    assert "gradients clipped to norm 1" in out and "4 micro-batches of 16 per optimizer step" in out
    assert cli("preview", cfg) == 0
    out = capsys.readouterr().out
    assert "warmup 11 steps" in out
    lines = [line.split("\t") for line in out.splitlines() if line[:1].isdigit()]
    assert float(lines[0][2]) == pytest.approx(0.01) and float(lines[11][2]) == pytest.approx(0.1)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_processes_accumulating_match_one_process_without(cli, tiny_config, tmp_path):
    """2 ranks (gloo) x accumulate 4 (micro-batches of 8; digits' last batch of 3 leaves ranks
    empty micro-batches, which still join the one reduction) = one process, accumulate 1."""
    from test_robustness import spawn

    base = {"epochs": 1, "eval_every": 10, "clip_grad_norm": 5.0}
    one = tiny_config("one", train=base)
    assert cli("train", one, "--run-dir", tmp_path / "one", "-q") == 0
    two = tiny_config("two", train={**base, "accumulate": 4})
    proc = spawn("train", two, "--nproc", "2", "--run-dir", tmp_path / "two", "-q")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    a, b = rows(tmp_path / "one" / "metrics.csv"), rows(tmp_path / "two" / "metrics.csv")
    assert [r["lr"] for r in a] == [r["lr"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "val_acc", "grad_norm"):
            if ra[key]:
                assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-4, abs=1e-6), key
