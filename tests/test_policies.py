"""Every policy's LR trace equals torch's, including PyTorch's own reference vectors
(test/optim/test_lrscheduler.py), and momentum is cycled only when asked for."""

import math

import pytest
import torch
from torch.optim import lr_scheduler

from clrctl.config import OptimizerConfig, PolicyConfig
from clrctl.policies import preview


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
