"""The suggestion rules on synthetic curves with known answers (pure numpy, fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clrctl.rangetest import suggest as S

STEEPEST = 1e-3  # true steepest point (in ln lr) of the synthetic exp-sweep curve


def exp_sweep(n=200, start=1e-6, end=10.0):
    return start * (end / start) ** (np.arange(n) / (n - 1))


def static_curve(lr, noise=0.0, seed=0):
    """Falls as a tanh in log10(lr) centred at 1e-3 (steepest there), then blows up past 0.3."""
    x = np.log10(lr)
    loss = 2.3 - 1.0 * np.tanh((x - math.log10(STEEPEST)) / 0.5) + 3.0 * np.clip(x - math.log10(0.3), 0, None) ** 2
    return loss + noise * np.random.default_rng(seed).standard_normal(len(lr))


def logistic_accuracy(lr, onset, falls, chance=0.1, top=0.95):
    """Accuracy that rises around ``onset`` and collapses right after ``falls``."""
    rise = chance + (top - chance) / (1 + np.exp(-(np.log10(lr) - np.log10(onset) - 0.5) * 8))
    return np.where(lr > falls, chance + 0.3, rise)


def decades(a, b):
    return abs(math.log10(a) - math.log10(b))


# -- smoothing --------------------------------------------------------------------------


def test_ema_is_debiased_with_a_local_counter():
    assert np.allclose(S.ema_debiased(np.full(50, 3.0), 0.98), 3.0)
    values = np.array([2.0, 1.0, 4.0])
    expected_2 = (0.02 * 0.98**2 * 2 + 0.02 * 0.98 * 1 + 0.02 * 4) / (1 - 0.98**3)
    assert S.ema_debiased(values, 0.98)[0] == 2.0
    assert S.ema_debiased(values, 0.98)[2] == pytest.approx(expected_2)


def test_savgol_keeps_quadratics_exactly_and_matches_scipy():
    x = np.linspace(-3, 3, 101)
    quad = 1.5 * x**2 - x + 0.3
    assert np.allclose(S.savgol(quad, 21, 2), quad)
    signal = pytest.importorskip("scipy.signal")
    noisy = quad + np.random.default_rng(0).standard_normal(101)
    assert np.allclose(S.savgol(noisy, 21, 2), signal.savgol_filter(noisy, 21, 2, mode="interp"))


# -- single-LR rules ------------------------------------------------------------------------


def test_steepest_finds_the_known_point_without_lag():
    lr = exp_sweep()
    loss = static_curve(lr)
    la = S.loss_analysis(lr, loss)
    assert decades(lr[la["steepest_i"]], STEEPEST) < 0.1
    # The EMA that peers use puts it ~0.5 decade too far right; ours does not.
    ema = S.ema_debiased(loss, 0.98)
    lagged = lr[np.argmin(np.gradient(ema[:150], np.log(lr[:150])))]
    assert decades(lagged, STEEPEST) > 0.3


@pytest.mark.parametrize("seed", range(5))
def test_steepest_with_noise_stays_near_the_known_point(seed):
    lr = exp_sweep()
    s = S.suggest(lr, static_curve(lr, 0.15, seed), S.ema_debiased(static_curve(lr, 0.15, seed), 0.98),
                  lr[::10], logistic_accuracy(lr[::10], 3e-4, 0.1), eval_size=500, planned_steps=200)
    assert decades(s["candidates"]["steepest"]["lr"], STEEPEST) < 0.35
    # min is where the blow-up starts (just above 0.3 decades of flat bottom); /10 is far lower
    assert 1e-2 < s["candidates"]["loss_min"]["lr"] <= 0.5


def test_valley_matches_fastai_double_loop():
    def fastai_valley(losses):  # transcription of fastai.callback.schedule.valley (index only)
        n = len(losses)
        max_start, max_end = 0, 0
        lds = [1] * n
        for i in range(1, n):
            for j in range(0, i):
                if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                    lds[i] = lds[j] + 1
                if lds[max_end] < lds[i]:
                    max_end = i
                    max_start = max_end - lds[max_end]
        sections = (max_end - max_start) / 3
        return max_start + int(sections) + int(sections / 2)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=60))
    def check(losses):
        assert S.valley_index(np.array(losses)) == fastai_valley(losses)

    check()


def test_flat_curve_gives_no_numbers_but_reasons():
    lr = exp_sweep()
    loss = 2.3 + 0.05 * np.random.default_rng(1).standard_normal(len(lr))
    acc = 0.1 + 0.01 * np.random.default_rng(2).standard_normal(20)
    s = S.suggest(lr, loss, S.ema_debiased(loss, 0.98), lr[::10], acc, eval_size=500, planned_steps=200)
    for name in ("steepest", "valley", "min_loss/10", "loss_min", "accuracy_onset"):
        assert s["candidates"][name]["lr"] is None
        assert s["candidates"][name]["reason"]
    assert s["base_lr"] is None and s["max_lr"] is None
    assert "no bounds" in s["reason"]
    exactly_flat = np.full(100, 1.0)
    assert S.loss_analysis(exp_sweep(100), exactly_flat)["reason"]


def test_divergence_tail_does_not_move_the_minimum():
    """A sweep that ends in an explosion (loss x 1000): minimum and bounds stay before it."""
    lr = exp_sweep(120, 1e-5, 1.0)
    loss = static_curve(lr, 0.05)
    loss[-5:] = [50.0, 300.0, 2000.0, 1e4, 5e4]
    s = S.suggest(lr, loss, S.ema_debiased(loss, 0.98), lr[::10], logistic_accuracy(lr[::10], 3e-4, 0.1),
                  eval_size=500, planned_steps=120)
    assert s["candidates"]["loss_min"]["lr"] < lr[-5]
    assert decades(s["candidates"]["steepest"]["lr"], STEEPEST) < 0.35


def test_nan_cuts_the_curve_where_it_appears():
    lr = exp_sweep()
    loss = static_curve(lr, 0.05)
    loss[150] = np.nan  # the sweep stops at the first non-finite loss
    ema = S.ema_debiased(loss, 0.98)
    s = S.suggest(lr[:151], loss[:151], ema[:151], lr[:151:10], logistic_accuracy(lr[:151:10], 3e-4, 0.1),
                  eval_size=500, planned_steps=200)
    for name in ("steepest", "valley", "loss_min"):
        assert s["candidates"][name]["lr"] is not None and s["candidates"][name]["lr"] < lr[150]
    assert decades(s["candidates"]["steepest"]["lr"], STEEPEST) < 0.35


def test_nan_at_the_start_gives_reasons():
    lr = exp_sweep(20)
    loss = np.full(20, np.nan)
    s = S.suggest(lr, loss, loss, lr[::5], np.full(4, np.nan), eval_size=100, planned_steps=20)
    assert s["base_lr"] is None and "finite" in s["candidates"]["steepest"]["reason"]


# -- Smith's bounds ------------------------------------------------------------------------


def test_accuracy_bounds_on_a_known_curve():
    lr = np.linspace(1e-4, 0.3, 341)  # linear sweep, eval every 10 steps
    eval_lr = lr[::10]
    acc = logistic_accuracy(eval_lr, onset=0.02, falls=0.1)
    loss = 2.3 - 2.0 / (1 + np.exp(-(lr - 0.04) * 100)) + 20 * np.clip(lr - 0.15, 0, None)
    s = S.suggest(lr, loss, S.ema_debiased(loss, 0.98), eval_lr, acc, eval_size=450, planned_steps=341)
    c = s["candidates"]
    assert c["accuracy_falls"]["lr"] <= 0.1 < c["accuracy_falls"]["lr"] + 0.01  # last point before the fall
    assert s["max_lr"] == c["accuracy_falls"]["lr"] and s["max_rule"] == "accuracy_falls"
    crossing = 0.02 * 10 ** (0.5 - math.log(9) / 8)  # where the logistic makes 10% of its rise
    step = eval_lr[1] - eval_lr[0]
    assert crossing <= c["accuracy_onset"]["lr"] < crossing + step
    assert s["base_lr"] == c["accuracy_onset"]["lr"] and s["base_rule"] == "accuracy_onset"
    assert c["max_lr/4"]["lr"] == pytest.approx(s["max_lr"] / 4)
    assert all(e["rule"] for e in c.values())


def test_onset_far_below_max_falls_back_to_max_over_4():
    lr = exp_sweep(200, 1e-6, 1.0)
    eval_lr = lr[::10]
    acc = logistic_accuracy(eval_lr, onset=1e-5, falls=0.1)  # rises 4 decades below the fall
    loss = static_curve(lr)
    s = S.suggest(lr, loss, S.ema_debiased(loss, 0.98), eval_lr, acc, eval_size=500, planned_steps=200)
    assert s["base_rule"] == "max_lr/4" and s["base_lr"] == pytest.approx(s["max_lr"] / 4)
    assert any("used max_lr/4" in w for w in s["warnings"])


def test_loss_minimum_caps_max_lr_when_accuracy_never_falls():
    lr = np.linspace(1e-4, 0.3, 301)
    eval_lr = lr[::10]
    acc = 0.1 + 0.85 / (1 + np.exp(-(eval_lr - 0.03) * 200))  # saturates, never falls
    loss = 2.3 - 2.0 / (1 + np.exp(-(lr - 0.03) * 200)) + 10 * np.clip(lr - 0.2, 0, None) ** 2 * 10
    s = S.suggest(lr, loss, S.ema_debiased(loss, 0.98), eval_lr, acc, eval_size=500, planned_steps=301)
    assert s["candidates"]["accuracy_falls"]["lr"] is None
    assert "did not fall" in s["candidates"]["accuracy_falls"]["reason"]
    assert s["max_rule"] == "loss_min" and 0.1 < s["max_lr"] <= 0.21


# -- seeds ------------------------------------------------------------------------------------


def test_combine_reports_median_and_spread_in_decades():
    def fake(base, high):
        cand = {name: {"lr": high, "rule": "r", "reason": None} for name in ("steepest", "valley")}
        return {"base_lr": base, "max_lr": high, "candidates": cand}

    out = S.combine([fake(0.01, 0.1), fake(0.02, 0.2), fake(0.03, 1.0)])
    assert out["median"]["max_lr"] == pytest.approx(0.2)
    assert out["spread_decades"]["max_lr"] == pytest.approx(1.0)
    assert out["spread_decades"]["base_lr"] == pytest.approx(math.log10(3))
    assert any(w.startswith("max_lr varies by 1.00 decades") for w in out["warnings"])
    assert not any(w.startswith("base_lr") for w in out["warnings"])  # 0.48 decade
