"""Every policy's LR trace equals torch's, including PyTorch's own reference vectors
(test/optim/test_lrscheduler.py), and momentum is cycled only when asked for."""

import math

import pytest
import torch
from torch.optim import lr_scheduler

from clrctl.config.schema import OptimizerConfig, PolicyConfig
from clrctl.optim.policies import preview


def trace(policy: dict, steps: int, spe: int = 10, optimizer: dict | None = None):
    rows = preview(PolicyConfig(**policy), OptimizerConfig(**(optimizer or {})), spe, steps)
    return [lr for _, lr, _ in rows], [m for _, _, m in rows]


def torch_trace(make, steps: int, lr: float, momentum: float = 0.0, opt=torch.optim.SGD):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = opt([param], lr=lr, momentum=momentum) if opt is torch.optim.SGD else opt([param], lr=lr)
    sched = make(optimizer)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    return out


# -- PyTorch's own reference vectors ---------------------------------------------------

def test_triangular_reference_vector():
    lrs, _ = trace({"name": "triangular", "bounds": [1, 5], "stepsize": 4}, 11)
    assert lrs == pytest.approx([1, 2, 3, 4, 5, 4, 3, 2, 1, 2, 3])


def test_triangular2_reference_vector_halves_each_cycle():
    lrs, _ = trace({"name": "triangular2", "bounds": [1, 5], "stepsize": 4}, 22)
    expected = [1, 2, 3, 4, 5, 4, 3, 2, 1, 1.5, 2.0, 2.5, 3.0, 2.5, 2.0, 1.5, 1, 1.25, 1.50, 1.75, 2.00, 1.75]
    assert lrs == pytest.approx(expected)


def test_exp_range_reference_vector():
    gamma = 0.9
    lrs, _ = trace({"name": "exp_range", "bounds": [1, 5], "stepsize": 4, "gamma": gamma}, 22)
    x = [0, 0.25, 0.5, 0.75, 1, 0.75, 0.5, 0.25] * 3
    expected = [1 + 4 * x[i] * gamma**i for i in range(22)]
    assert lrs == pytest.approx(expected)


def test_one_cycle_linear_reference_vector():
    lrs, _ = trace({"name": "one_cycle", "bounds": [1, 25], "anneal": "linear", "final_div": 2}, 10)
    assert lrs == pytest.approx([1, 13, 25, 21.5, 18, 14.5, 11, 7.5, 4, 0.5])


def test_one_cycle_three_phase_reference_vector():
    lrs, _ = trace({"name": "one_cycle", "bounds": [1, 25], "anneal": "linear", "final_div": 4,
                    "pct_start": 0.4, "three_phase": True}, 10)
    assert lrs == pytest.approx([1, 9, 17, 25, 17, 9, 1, 0.75, 0.5, 0.25])


def test_one_cycle_cosine_reference_vector():
    lrs, _ = trace({"name": "one_cycle", "bounds": [1, 25], "final_div": 2}, 10)
    down = [0.5 + (25 - 0.5) / 2 * (1 + math.cos(math.pi * k / 7)) for k in range(1, 7)]
    assert lrs == pytest.approx([1, 13, 25, *down, 0.5])


# -- Each policy equals the torch class it is built on ------------------------------------

@pytest.mark.parametrize("mode,extra", [("triangular", {}), ("triangular2", {}), ("exp_range", {"gamma": 0.99})])
def test_cyclic_policies_equal_torch(mode, extra):
    lrs, _ = trace({"name": mode, "bounds": [0.01, 0.1], "stepsize": "2 epochs", **extra}, 200, spe=13)
    expected = torch_trace(lambda o: lr_scheduler.CyclicLR(o, 0.01, 0.1, step_size_up=26, mode=mode,
                                                           gamma=extra.get("gamma", 1.0), cycle_momentum=False),
                           200, lr=0.01)
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_cosine_equals_torch_from_max_to_base():
    lrs, _ = trace({"name": "cosine", "bounds": [0.001, 0.1]}, 50)
    expected = torch_trace(lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=50, eta_min=0.001), 50, lr=0.1)
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[0] == pytest.approx(0.1)


def test_sgdr_equals_torch_warm_restarts():
    lrs, _ = trace({"name": "sgdr", "bounds": [0.001, 0.1], "stepsize": 5, "t_mult": 2}, 40)
    expected = torch_trace(lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2, eta_min=0.001),
                           40, lr=0.1)
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[5] == pytest.approx(0.1) and lrs[15] == pytest.approx(0.1)  # restarts after 5, then 10 steps


def test_step_equals_multisteplr_with_epoch_milestones():
    lrs, _ = trace({"name": "step", "lr": 0.1, "milestones": ["1 epoch", 25], "gamma": 0.5}, 40, spe=10)
    expected = torch_trace(lambda o: lr_scheduler.MultiStepLR(o, milestones=[10, 25], gamma=0.5), 40, lr=0.1)
    assert lrs == pytest.approx(expected)


def test_fixed_is_constant_base_or_lr():
    assert trace({"name": "fixed", "lr": 0.03}, 5)[0] == pytest.approx([0.03] * 5)
    assert trace({"name": "fixed", "bounds": [0.02, 0.5]}, 5)[0] == pytest.approx([0.02] * 5)


# -- Momentum ---------------------------------------------------------------------------

def test_cyclic_momentum_only_when_asked():
    _, moms = trace({"name": "triangular", "bounds": [1, 5], "stepsize": 4}, 11)
    assert moms == [0.0] * 11  # torch's CyclicLR would have switched on 0.8..0.9 here
    _, moms = trace({"name": "triangular", "bounds": [1, 5], "stepsize": 4}, 11, optimizer={"momentum": 0.9})
    assert moms == [0.9] * 11


def test_cyclic_momentum_is_inverse_to_lr_like_torch():
    _, moms = trace({"name": "triangular", "bounds": [1, 5], "stepsize": 4, "momentum": [0.8, 0.9]}, 11,
                    optimizer={"momentum": 0.9})
    lrs = [1, 2, 3, 4, 5, 4, 3, 2, 1, 2, 3]
    assert moms == pytest.approx([0.9 - 0.1 * (lr - 1) / 4 for lr in lrs])


def test_one_cycle_cycles_momentum_by_default_only_with_momentum():
    _, moms = trace({"name": "one_cycle", "bounds": [1, 25], "anneal": "linear"}, 10, optimizer={"momentum": 0.9})
    assert moms[0] == pytest.approx(0.95) and moms[2] == pytest.approx(0.85)
    _, moms = trace({"name": "one_cycle", "bounds": [1, 25], "anneal": "linear"}, 10)
    assert moms == [0.0] * 10  # plain SGD stays plain


def test_one_cycle_cycles_adam_beta1():
    _, moms = trace({"name": "one_cycle", "bounds": [1, 25], "anneal": "linear"}, 10, optimizer={"name": "adam"})
    assert moms[0] == pytest.approx(0.95) and moms[2] == pytest.approx(0.85)


def test_sgdr_momentum_coupled_inversely():
    lrs, moms = trace({"name": "sgdr", "bounds": [0.001, 0.1], "stepsize": 5, "momentum": [0.85, 0.95]}, 10,
                      optimizer={"momentum": 0.9})
    assert moms[0] == pytest.approx(0.85)  # LR at max -> momentum at its low
    for lr, m in zip(lrs, moms):
        assert m == pytest.approx(0.95 - 0.1 * (lr - 0.001) / (0.1 - 0.001))


def test_one_cycle_raises_past_its_length_like_torch():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = lr_scheduler.OneCycleLR(opt, max_lr=25, total_steps=10)
    for _ in range(10):
        opt.step()
        sched.step()  # step N extrapolates silently
    with pytest.raises(ValueError):
        sched.step()  # N + 1 raises: the trainer never steps past the run's length


# -- Baselines beside CLR: linear (to zero) and warmup-stable-decay ------------------------

def test_linear_equals_torch_linearlr_from_max_to_base():
    lrs, _ = trace({"name": "linear", "bounds": [0.001, 0.1]}, 50)
    expected = torch_trace(lambda o: lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.01, total_iters=50),
                           50, lr=0.1)
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs == pytest.approx([0.1 + (0.001 - 0.1) * t / 50 for t in range(50)])


def test_linear_to_zero_is_budgeted_trainings_schedule():
    # Li et al., Budgeted Training (ICLR 2020): lr_t = lr_0 (1 - t / T).
    lrs, _ = trace({"name": "linear", "bounds": [0, 0.1]}, 40)
    assert lrs == pytest.approx([0.1 * (1 - t / 40) for t in range(40)], abs=1e-15)


def test_cosine_may_decay_to_zero():
    lrs, _ = trace({"name": "cosine", "bounds": [0, 0.1]}, 30)
    expected = torch_trace(lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=30, eta_min=0.0), 30, lr=0.1)
    assert lrs == pytest.approx(expected, rel=1e-12)


# WSD (MiniCPM, arXiv 2404.06395, eq. 1; Hägele et al. 2024, arXiv 2405.18392, §3): the LR stays
# at its maximum, then over the last D steps falls to the minimum along the cooldown shape f of
# the progress p = (t - (T - D)) / D: linear 1 - p, "1-sqrt" 1 - sqrt(p), cosine (1 + cos(pi p)) / 2.
# Here T = 20 steps, decay 0.25 -> D = 5, cooldown from step 15; base 0.01, max 0.11.
P = [0.0, 0.2, 0.4, 0.6, 0.8]
WSD_COOLDOWNS = {
    "linear": [0.11, 0.09, 0.07, 0.05, 0.03],
    "sqrt": [0.01 + 0.1 * (1 - math.sqrt(p)) for p in P],  # 0.11, 0.0553, 0.0468, 0.0325, 0.0206
    "cosine": [0.01 + 0.05 * (1 + math.cos(math.pi * p)) for p in P],
}


@pytest.mark.parametrize("shape", sorted(WSD_COOLDOWNS))
def test_wsd_trace_follows_the_papers_definition(shape):
    lrs, _ = trace({"name": "wsd", "bounds": [0.01, 0.11], "decay": 0.25, "decay_shape": shape}, 20)
    assert lrs == pytest.approx([0.11] * 15 + WSD_COOLDOWNS[shape], rel=1e-12)


def test_wsd_defaults_are_a_20_percent_sqrt_cooldown_and_may_reach_zero():
    lrs, _ = trace({"name": "wsd", "bounds": [0, 0.1]}, 50)
    assert lrs[:40] == [pytest.approx(0.1)] * 40
    assert lrs[40:] == pytest.approx([0.1 * (1 - math.sqrt(k / 10)) for k in range(10)], abs=1e-15)


def test_wsd_and_linear_scale_each_group_by_its_lr_mult():
    from clrctl.optim.policies import build_schedule

    for policy in ({"name": "wsd", "bounds": [0, 0.1], "decay": 0.5}, {"name": "linear", "bounds": [0.01, 0.1]}):
        params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
        target = torch.optim.SGD([{"params": [params[0]], "lr_mult": 1.0}, {"params": [params[1]], "lr_mult": 0.1}],
                                 lr=1.0)
        schedule = build_schedule(PolicyConfig(**policy), OptimizerConfig(), target, 10, 20)
        expected, _ = trace(policy, 20)
        for step in range(20):
            assert [g["lr"] for g in target.param_groups] == pytest.approx([expected[step], 0.1 * expected[step]])
            schedule.step()


@pytest.mark.parametrize("policy", [{"name": "linear", "bounds": [0, 0.1]},
                                    {"name": "wsd", "bounds": [0.001, 0.1], "decay": 0.4, "decay_shape": "cosine"},
                                    {"name": "wsd", "bounds": [0, 0.1], "momentum": [0.85, 0.95]}])
def test_a_schedule_resumed_mid_run_from_its_checkpoint_gives_the_same_trace(policy, tmp_path):
    from clrctl.optim.policies import build_schedule

    def schedule_for():
        target = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
        return target, build_schedule(PolicyConfig(**policy), OptimizerConfig(momentum=0.9), target, 10, 30)

    def record(target, schedule, steps):
        out = []
        for _ in range(steps):
            out.append((target.param_groups[0]["lr"], target.param_groups[0]["momentum"]))
            schedule.step()
        return out

    target, schedule = schedule_for()
    uninterrupted = record(target, schedule, 30)
    target, schedule = schedule_for()
    first = record(target, schedule, 17)  # mid-decay for both wsd configs
    torch.save({"scheduler": schedule.state_dict()}, tmp_path / "last.pt")
    target, schedule = schedule_for()  # a new process: built afresh, then loaded
    schedule.load_state_dict(torch.load(tmp_path / "last.pt", weights_only=False)["scheduler"])
    assert first + record(target, schedule, 13) == uninterrupted


@pytest.mark.slow  # the same, in-process: the test below (a real SIGINT: test_robustness's)
def test_wsd_run_interrupted_mid_decay_resumes_on_the_same_trace(cli, tiny_config, tmp_path, hold):
    """The real thing: a training subprocess stopped by SIGINT in its cooldown, then --resume;
    metrics.csv's LR column is preview's trace, float for float (the generic exactness of
    resume, batches and weights, is test_robustness's)."""
    import csv
    import json
    import signal
    import sys

    from test_robustness import TESTS, slow_config, spawn, wait_for_rows

    policy = {"name": "wsd", "bounds": [0, 0.1], "decay": 0.5}
    cfg = slow_config(tiny_config, policy=policy)
    run = tmp_path / "stopped"
    held = hold(55)
    proc = spawn("train", cfg, "--run-dir", run, "-q", env=held.env)
    wait_for_rows(run / "metrics.csv", 40, proc)  # 66 steps, the decay starts at step 33
    proc.send_signal(signal.SIGINT)
    held.release()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    sys.path.insert(0, str(TESTS))  # slow_model:build, in-process
    try:
        assert cli("train", "--resume", run, "-q") == 0
    finally:
        sys.path.remove(str(TESTS))
    with open(run / "metrics.csv", newline="") as handle:
        lrs = [float(row["lr"]) for row in csv.DictReader(handle)]
    assert json.loads((run / "run.json").read_text())["resumed"][0]["step"] > 33  # resumed mid-decay
    assert lrs == trace(policy, 66, spe=22)[0]
    assert lrs[:33] == [0.1] * 33 and lrs[33:] == pytest.approx([0.1 * (1 - math.sqrt(k / 33)) for k in range(33)])


def test_wsd_run_stopped_mid_decay_resumes_on_the_same_trace(cli, tiny_config, tmp_path, signal_cli_at):
    """The test above in-process: SIGINT right after step 40 (66 steps, the decay starts at 33)."""
    import csv
    import json
    import signal

    policy = {"name": "wsd", "bounds": [0, 0.1], "decay": 0.5}
    cfg = tiny_config(policy=policy, train={"epochs": 3, "eval_every": 5})
    run = tmp_path / "stopped"
    signal_cli_at(40, signal.SIGINT)
    assert cli("train", cfg, "--run-dir", run, "-q") == 130
    assert cli("train", "--resume", run, "-q") == 0
    with open(run / "metrics.csv", newline="") as handle:
        lrs = [float(row["lr"]) for row in csv.DictReader(handle)]
    assert json.loads((run / "run.json").read_text())["resumed"][0]["step"] > 33  # resumed mid-decay
    assert lrs == trace(policy, 66, spe=22)[0]
    assert lrs[:33] == [0.1] * 33 and lrs[33:] == pytest.approx([0.1 * (1 - math.sqrt(k / 33)) for k in range(33)])


@pytest.mark.parametrize("overrides, message", [
    (["policy.name=wsd", "policy.decay=0"], "policy.decay: Input should be greater than 0"),
    (["policy.name=wsd", "policy.decay=1.5"], "policy.decay: Input should be less than or equal to 1"),
    (["policy.name=wsd", "policy.decay_shape=exp"], "policy.decay_shape: Input should be 'linear', 'sqrt' or 'cosine'"),
    (["policy.decay=0.3"], "policy.decay: applies to policy 'wsd' only, not 'triangular2'"),
    (["policy.name=linear", "policy.decay_shape=sqrt"], "policy.decay_shape: applies to policy 'wsd' only, not 'linear'"),
    (["policy.bounds=[0, 0.1]"], "policy.bounds: base_lr 0 is allowed for linear, wsd, cosine only, not 'triangular2'"),
    (["policy.name=one_cycle", "policy.bounds=[0, 0.1]"], "policy.bounds: base_lr 0 is allowed for linear"),
    (["policy.name=linear", "policy.bounds=[-0.1, 0.1]"], "policy.bounds: learning rates must be finite and not negative"),
])  # fmt: skip
def test_bad_linear_and_wsd_input_is_one_line_exit_2_and_no_run_dir(cli, tiny_config, tmp_path, capsys, overrides,
                                                                    message):
    run = tmp_path / "run"
    assert cli("train", tiny_config(), *overrides, "--run-dir", run, "-q") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err, err
    assert not run.exists()


def test_preview_and_validate_show_linear_and_wsd(cli, tiny_config, capsys):
    assert cli("preview", tiny_config(), "policy.name=wsd", "policy.bounds=[0, 0.1]", "--rows", "2") == 0
    out = capsys.readouterr().out
    assert out.startswith("wsd: 44 steps (22 per epoch)") and "0.1" in out
    assert cli("validate", tiny_config(), "policy.name=linear", "policy.bounds=[0, 0.1]") == 0
    assert "linear 0–0.1, 44 steps" in capsys.readouterr().out
