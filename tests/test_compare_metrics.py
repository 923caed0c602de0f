"""compare's arithmetic with exact numbers: steps to target, censoring, speed-up, AUC, statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clrctl.compare import stats
from clrctl.compare.metrics import (
    Target,
    auc,
    parse_target,
    shared_budget,
    steps_to_target,
    target_from_run,
    train_scalars,
)
from clrctl.compare.report import Options, build_report, config_diff, flatten
from clrctl.compare.runs import load_run, load_side
from clrctl.compare.stats import Tolerance
from clrctl.errors import InputError
from test_compare_support import base_config, make_group, make_run


# -- steps to target -----------------------------------------------------------------------
def test_steps_to_target_is_row_step_plus_one_of_first_hit(tmp_path):
    run = load_run(make_run(tmp_path / "r", {9: 0.50, 19: 0.96, 29: 0.97, 39: 0.99}, steps=40))
    assert steps_to_target(run, Target("val_acc", 0.97)) == 30.0  # row step 29 -> 30 steps done
    assert steps_to_target(run, Target("val_acc", 0.96)) == 20.0
    assert steps_to_target(run, Target("val_acc", 0.995)) == math.inf  # never: censored
    # a loss target is reached from above: val_loss = 1 - val_acc here
    assert steps_to_target(run, Target("val_loss", 0.05)) == 20.0


def test_steps_to_target_falls_back_to_the_summary_number_or_dict(tmp_path):
    number = load_run(make_run(tmp_path / "a", {9: 0.9}, steps=10, summary={"steps_to_target": 180}))
    record = load_run(make_run(tmp_path / "b", {9: 0.9}, steps=10,
                               summary={"steps_to_target": {"val_acc": {"target": 0.97, "step": 120}}}))
    never = load_run(make_run(tmp_path / "c", {9: 0.9}, steps=10,
                              summary={"steps_to_target": {"val_acc": {"target": 0.97, "step": None}}}))
    assert steps_to_target(number, None) == 180.0
    assert steps_to_target(record, None) == 120.0
    assert steps_to_target(never, None) == math.inf
    assert target_from_run(record) == Target("val_acc", 0.97)
    assert target_from_run(number) is None


def test_target_comes_from_the_config(tmp_path):
    config = base_config(train__target={"val_acc": 0.9})
    run = load_run(make_run(tmp_path / "r", {9: 0.9}, steps=10, config=config))
    assert target_from_run(run) == Target("val_acc", 0.9)


@pytest.mark.parametrize("text", ["val_acc", "acc=0.9", "val_acc=high", "val_acc=nan"])
def test_bad_target_is_input_error(text):
    with pytest.raises(InputError, match="--target"):
        parse_target(text)


def test_parse_target():
    assert parse_target("val_acc=0.97") == Target("val_acc", 0.97)
    assert parse_target("val_loss=0.1").direction == -1


# -- AUC and the shared budget -----------------------------------------------------------------
def test_auc_is_mean_accuracy_over_the_budget(tmp_path):
    run = load_run(make_run(tmp_path / "r", {49: 0.90, 99: 0.97}, steps=100))
    # held at 0.90 before the first eval (x=50), then linear to 0.97 at x=100
    assert auc(run, 100) == pytest.approx((50 * 0.90 + 50 * (0.90 + 0.97) / 2) / 100)
    # a shorter shared budget stops half-way along the second segment: 0.935 at x=75
    assert auc(run, 75) == pytest.approx((50 * 0.90 + 25 * (0.90 + 0.935) / 2) / 75)


def test_shared_budget_is_the_fewest_steps(tmp_path):
    a = load_run(make_run(tmp_path / "a", {49: 0.9}, steps=100))
    b = load_run(make_run(tmp_path / "b", {29: 0.9}, steps=60))
    assert shared_budget([a, b]) == 60.0
    assert train_scalars(b, None, 60)["auc_val_acc"] == pytest.approx(0.9)


def test_scalars_fall_back_to_the_csvs_without_summary(tmp_path):
    run = load_run(make_run(tmp_path / "r", {49: 0.95, 99: 0.93}, steps=100, write_summary=False))
    values = train_scalars(run, None, 100)
    assert values["steps"] == 100
    assert values["final_val_acc"] == 0.93
    assert values["best_val_acc"] == 0.95
    assert values["final_val_loss"] == pytest.approx(0.07)
    assert values["elapsed_s"] == pytest.approx(10.0)


# -- speed-up ---------------------------------------------------------------------------------
def _report(tmp_path, base_evals, cand_evals, steps=100, **options):
    a = load_side(str(make_run(tmp_path / "base", base_evals, steps=steps)))
    b = load_side(str(make_run(tmp_path / "cand", cand_evals, steps=steps)))
    return build_report([a, b], 0, Options(**options))


def test_speedup_is_baseline_steps_over_candidate_steps(tmp_path):
    report = _report(tmp_path, {59: 0.97, 99: 0.98}, {29: 0.97, 99: 0.98}, target=Target("val_acc", 0.97))
    comp = report["comparisons"][0]
    assert comp["metrics"]["steps_to_target"]["old"] == 60
    assert comp["metrics"]["steps_to_target"]["new"] == 30
    assert comp["metrics"]["steps_to_target"]["diff"] == -30
    assert comp["speedup"] == {"value": 2.0, "bound": "=", "ci_low": None, "ci_high": None, "censored": None}


def test_censored_candidate_is_kept_and_bounds_the_speedup(tmp_path):
    report = _report(tmp_path, {49: 0.97}, {49: 0.90, 99: 0.96}, target=Target("val_acc", 0.97))
    cand = report["runs"][1]["metrics"]["steps_to_target"]
    assert cand["censored"] == 1 and cand["censored_at"] == 100
    comp = report["comparisons"][0]
    assert comp["speedup"]["bound"] == "<" and comp["speedup"]["value"] == pytest.approx(0.5)  # < 50/100
    assert comp["metrics"]["steps_to_target"]["verdict"] == "worse"


def test_censored_baseline_gives_a_lower_bound(tmp_path):
    report = _report(tmp_path, {99: 0.90}, {24: 0.97}, target=Target("val_acc", 0.97))
    assert report["comparisons"][0]["speedup"]["bound"] == ">"
    assert report["comparisons"][0]["speedup"]["value"] == pytest.approx(4.0)  # > 100/25


def test_both_censored_is_the_same_and_has_no_speedup(tmp_path):
    report = _report(tmp_path, {99: 0.90}, {99: 0.91}, target=Target("val_acc", 0.97))
    comp = report["comparisons"][0]
    assert comp["speedup"]["value"] is None
    assert comp["metrics"]["steps_to_target"]["verdict"] == "same"


# -- statistics ---------------------------------------------------------------------------------
def test_summarize_median_and_spread():
    s = stats.summarize(np.array([0.95, 0.97, 0.96, 0.99]))
    assert s["median"] == pytest.approx(0.965)
    assert (s["min"], s["max"], s["n"]) == (0.95, 0.99, 4)


def test_median_keeps_censored_middle_censored():
    assert stats.summarize(np.array([100.0, math.inf, math.inf]))["median"] == math.inf
    assert stats.summarize(np.array([100.0, 120.0, math.inf]))["median"] == 120.0
    assert stats.summarize(np.array([100.0, math.inf]))["median"] == math.inf


def test_subtract_treats_two_censored_as_equal():
    assert stats.subtract(math.inf, math.inf) == 0.0
    assert stats.subtract(math.inf, 5.0) == math.inf


def test_paired_bootstrap_ci_exact_and_deterministic():
    base = np.array([0.95, 0.96, 0.97])
    cand = np.array([0.97, 0.975, 0.98])  # paired differences 0.02, 0.015, 0.01
    low, high = stats.bootstrap_ci(base, cand, paired=True)
    assert (low, high) == pytest.approx((0.01, 0.02))
    assert stats.bootstrap_ci(base, cand, paired=True) == (low, high)  # seeded
    assert float(stats.median_rows(stats.subtract(cand, base))) == pytest.approx(0.015)


def test_unpaired_bootstrap_ci_brackets_the_difference_of_medians():
    base = np.array([0.90, 0.91, 0.92, 0.93])
    cand = np.array([0.95, 0.96, 0.97])
    low, high = stats.bootstrap_ci(base, cand, paired=False, seed=3)
    assert low <= 0.96 - 0.915 <= high
    assert low >= 0.95 - 0.93 and high <= 0.97 - 0.90


@pytest.mark.parametrize(
    "low, high, tol, expected",
    [
        (-0.03, -0.02, 0.01, "worse"),
        (-0.02, 0.005, 0.01, "inconclusive"),
        (-0.005, 0.005, 0.01, "same"),
        (0.02, 0.03, 0.01, "better"),
        (-0.01, -0.01, 0.01, "same"),  # exactly at the tolerance is within it
        (0.96 - 0.97, 0.96 - 0.97, 0.01, "same"),  # float noise does not tip it
    ],
)
def test_verdict_on_the_interval(low, high, tol, expected):
    assert stats.verdict(+1, low, high, tol) == expected
    assert stats.verdict(-1, -high, -low, tol) == expected  # lower-is-better mirrors it


@pytest.mark.parametrize("text, value, relative", [("0.01", 0.01, False), ("2%", 0.02, True), ("0", 0.0, False)])
def test_tolerance_parse(text, value, relative):
    tol = Tolerance.parse(text)
    assert (tol.value, tol.relative) == (pytest.approx(value), relative)


def test_relative_tolerance_scales_with_the_baseline():
    assert Tolerance.parse("2%").absolute(0.97) == pytest.approx(0.0194)
    for bad in ("x", "-1", "%", "inf"):
        with pytest.raises(InputError, match="--tolerance"):
            Tolerance.parse(bad)


# -- groups and config diff ------------------------------------------------------------------------
def test_group_median_spread_and_paired_ci(tmp_path):
    a = make_group(tmp_path / "a", {0: {99: 0.95}, 1: {99: 0.96}, 2: {99: 0.97}})
    b = make_group(tmp_path / "b", {0: {99: 0.97}, 1: {99: 0.975}, 2: {99: 0.98}})
    report = build_report([load_side(str(a)), load_side(str(b))], 0, Options())
    side = report["runs"][0]["metrics"]["final_val_acc"]
    assert (side["median"], side["min"], side["max"], side["n"]) == (0.96, 0.95, 0.97, 3)
    comp = report["comparisons"][0]
    assert comp["paired"] and comp["n_pairs"] == 3
    entry = comp["metrics"]["final_val_acc"]
    assert entry["diff"] == pytest.approx(0.015)  # median of the paired differences
    assert (entry["ci_low"], entry["ci_high"]) == pytest.approx((0.01, 0.02))


def test_groups_without_shared_seeds_are_unpaired(tmp_path):
    a = make_group(tmp_path / "a", {0: {99: 0.95}, 1: {99: 0.96}})
    b = make_group(tmp_path / "b", {5: {99: 0.97}, 6: {99: 0.98}})
    comp = build_report([load_side(str(a)), load_side(str(b))], 0, Options())["comparisons"][0]
    assert not comp["paired"]
    assert comp["metrics"]["final_val_acc"]["diff"] == pytest.approx(0.975 - 0.955)


def test_config_diff_lists_dotted_keys_and_ignores_name_and_seed():
    a = base_config(name="a", seed=0)
    b = base_config(name="b", seed=1, policy__name="triangular2", policy__bounds=[0.01, 0.1], model__hidden=[32])
    keys = [d["key"] for d in config_diff(a, b)]
    assert keys == ["model.hidden", "policy.name", "policy.bounds"]
    assert flatten({"a": {"b": {"c": 1}}, "d": {}}) == {"a.b.c": 1, "d": {}}
