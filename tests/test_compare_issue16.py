"""compare: what issue 16 found — pooled globs, the range test's loss minimum, md/-q/one side,
losses that are not comparable, and the overlay plots' axes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_compare_support import base_config, make_group, make_range_test, make_run


def _json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


# -- a side is one config's seeds ------------------------------------------------------------------
def test_a_glob_over_two_groups_of_different_configs_is_refused(cli, tmp_path, capsys):
    base = make_group(tmp_path / "fixed-seeds", {0: {99: 0.97}, 1: {99: 0.96}, 2: {99: 0.97}})
    for name, bounds, seeds in (("tri2-a", [0.01, 0.1], (0, 1, 2)), ("tri2-b", [0.02, 0.2], (0, 1, 2, 3, 4))):
        make_group(tmp_path / name, {s: {99: 0.98} for s in seeds},
                   config=base_config(policy__name="triangular2", policy__bounds=bounds))
    assert cli("compare", base, f"{tmp_path}/tri2-*/seed-*") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "seed 0 appears twice" in err


def test_a_glob_over_runs_of_different_configs_names_the_key(cli, tmp_path, capsys):
    base = make_group(tmp_path / "base", {0: {99: 0.97}, 1: {99: 0.96}})
    make_run(tmp_path / "mix" / "a", {99: 0.98}, seed=0, config=base_config(seed=0, policy__lr=0.01))
    make_run(tmp_path / "mix" / "b", {99: 0.98}, seed=1, config=base_config(seed=1, policy__lr=0.02))
    assert cli("compare", base, f"{tmp_path}/mix/*") == 2
    err = capsys.readouterr().err
    assert "mixes runs of different configs (policy.lr: 0.01 in" in err and "0.02 in" in err
    assert cli("compare", base, tmp_path / "mix") == 2  # a directory of runs is checked the same way
    assert "policy.lr" in capsys.readouterr().err


def test_seeds_of_one_config_still_form_a_group(cli, tmp_path, capsys):
    base = make_group(tmp_path / "base", {0: {99: 0.97}, 1: {99: 0.96}})
    cand = make_group(tmp_path / "cand", {0: {99: 0.98}, 1: {99: 0.97}})
    assert cli("compare", base, f"{cand}/seed-*", "-f", "json") == 0
    assert _json(capsys.readouterr().out)["runs"][1]["seeds"] == [0, 1]


# -- range tests: one definition of the loss minimum ---------------------------------------------
def test_compare_reports_the_range_tests_own_loss_minimum_lr(cli, tiny_config, tmp_path, capsys):
    cfg = tiny_config("rt", range_test={"start_lr": 0.001, "end_lr": 3.0, "steps": 60, "eval_every": 10})
    assert cli("range-test", cfg, "--run-dir", tmp_path / "a", "-q") == 0
    assert cli("range-test", cfg, "seed=1", "--run-dir", tmp_path / "b", "-q") == 0
    capsys.readouterr()
    assert cli("compare", tmp_path / "a", tmp_path / "b", "-f", "json") == 0
    report = _json(capsys.readouterr().out)
    for i, name in enumerate("ab"):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        expected = summary["suggestion"]["candidates"]["loss_min"]["lr"]
        assert expected is not None
        assert report["runs"][i]["metrics"]["lr_at_min_loss"]["median"] == pytest.approx(expected, rel=1e-6)


def test_lr_differences_read_in_decades(cli, tmp_path, capsys):
    lrs = [1e-4 * 10 ** (i / 10) for i in range(41)]
    losses = [2.3 - 0.04 * i if i < 30 else 1.1 + 0.3 * (i - 30) for i in range(41)]
    a = make_range_test(tmp_path / "a", lrs, losses, {"base_lr": 0.001, "max_lr": 0.004})
    b = make_range_test(tmp_path / "b", lrs, losses, {"base_lr": 1.0, "max_lr": 4.0})
    assert cli("compare", a, b, "-f", "json") == 0
    entry = _json(capsys.readouterr().out)["comparisons"][0]["metrics"]["max_lr"]
    assert entry["diff_decades"] == pytest.approx(3.0)
    assert cli("compare", a, b, "-f", "md") == 0
    out = capsys.readouterr().out
    assert "+3.00 dec (×1e+03)" in out and "99900" not in out and "%" not in out.split("suggested max_lr")[2].split("\n")[0]


# -- the command line: md, -q, one side ------------------------------------------------------------
@pytest.fixture
def pair(tmp_path):
    base = make_run(tmp_path / "fixed", {19: 0.90, 39: 0.96, 59: 0.97, 99: 0.975})
    cand = make_run(tmp_path / "clr", {19: 0.95, 29: 0.97, 99: 0.98},
                    config=base_config(policy__name="triangular2", policy__bounds=[0.02, 0.1], policy__lr=None))
    return base, cand


def test_md_is_an_alias_of_markdown(cli, pair, capsys):
    assert cli("compare", *pair, "--format", "markdown") == 0
    markdown = capsys.readouterr().out
    assert cli("compare", *pair, "-f", "md") == 0
    assert capsys.readouterr().out == markdown and markdown.startswith("### clrctl compare")


def test_quiet_prints_only_the_verdict(cli, pair, capsys):
    assert cli("compare", *pair, "-q") == 0
    out = capsys.readouterr().out
    assert out.strip().count("\n") == 0 and out.startswith("pass: judged on final_val_acc")
    base, cand = pair
    assert cli("compare", cand, base, "--gate", "--tolerance", "0", "-q") == 1  # the exit code still tells
    captured = capsys.readouterr()
    assert captured.out.startswith("regression:") and captured.out.strip().count("\n") == 0


def test_one_run_or_group_alone_prints_its_summary(cli, pair, tmp_path, capsys):
    assert cli("compare", pair[0]) == 0
    out = capsys.readouterr().out
    assert "summary of fixed" in out and "final val acc" in out and "0.9750" in out and " vs " not in out
    group = make_group(tmp_path / "g", {0: {99: 0.97}, 1: {99: 0.96}, 2: {99: 0.98}})
    assert cli("compare", group, "-f", "json") == 0
    report = _json(capsys.readouterr().out)
    assert report["comparisons"] == [] and report["runs"][0]["seeds"] == [0, 1, 2]
    assert report["runs"][0]["metrics"]["final_val_acc"]["median"] == 0.97
    assert cli("compare", f"{group}/seed-*", "-f", "md") == 0
    assert "summary of group" in capsys.readouterr().out


def test_label_smoothing_makes_val_loss_not_comparable_not_a_regression(cli, tmp_path, capsys):
    base = make_run(tmp_path / "plain", {99: 0.97})
    smooth = make_run(tmp_path / "smooth", {99: 0.97}, summary={"final_val_loss": 0.6},
                      config=base_config(train__label_smoothing=0.1))
    assert cli("compare", base, smooth, "-f", "json") == 0
    report = _json(capsys.readouterr().out)
    assert report["comparisons"][0]["metrics"]["final_val_loss"]["verdict"] == "incomparable"
    assert any("val_loss is not comparable" in note and "train.label_smoothing" in note for note in report["notes"])
    assert cli("compare", base, smooth, "--gate", "--metric", "final_val_loss") == 0  # never a regression
    out = capsys.readouterr().out
    assert "worse" not in out and "not comparable" in out


# -- the overlay plots' axes -------------------------------------------------------------------------
def test_a_divergence_spike_does_not_stretch_the_range_overlay(cli, tmp_path):
    from clrctl.compare import curves
    from clrctl.compare.runs import load_side
    from clrctl.plots.compare import range_overlay_figure

    lrs = [1e-4 * 10 ** (i / 10) for i in range(41)]
    losses = [2.3 - 0.04 * i for i in range(40)] + [500.0]  # the last step diverges
    a = make_range_test(tmp_path / "a", lrs, losses, {"base_lr": 0.01, "max_lr": 0.04}, mode="exp")
    b = make_range_test(tmp_path / "b", lrs, [x * 1.1 for x in losses], {"base_lr": 0.01, "max_lr": 0.04}, mode="exp")
    drawn = [c for spec in (a, b) for c in curves.range_curves(load_side(str(spec)))]
    low, high = curves.range_ylim(drawn)
    assert low < 0.8 and 2.5 < high < 5  # the curves fill the axis; the spike runs off the top
    fig = range_overlay_figure(drawn, True, "t", (low, high))
    assert fig.axes[0].get_ylim() == (low, high)
    assert cli("compare", a, b, "--plot", tmp_path / "rt.png") == 0 and (tmp_path / "rt.png").stat().st_size > 0


def test_the_accuracy_panel_zooms_on_the_data_and_the_target(cli, tmp_path):
    from clrctl.compare import curves
    from clrctl.compare.runs import load_side
    from clrctl.plots.compare import train_overlay_figure

    evals = {9: 0.1, 19: 0.6, 29: 0.93, 39: 0.95, 49: 0.96, 59: 0.965, 69: 0.97, 79: 0.972, 89: 0.975, 99: 0.975}
    base = make_run(tmp_path / "a", evals)
    cand = make_run(tmp_path / "b", {s: min(1.0, v + 0.005) for s, v in evals.items()})
    drawn = [curves.train_curves(load_side(str(p))) for p in (base, cand)]
    low, high = curves.acc_ylim(drawn, 0.97)
    assert 0.85 < low < 0.95 and 0.975 < high < 1.0  # not 0.1 … 1.0: the region near the target fills it
    fig = train_overlay_figure(drawn, ("val_acc", 0.97), "t", (low, high))
    assert fig.axes[1].get_ylim() == (low, high)
    assert cli("compare", base, cand, "--target", "val_acc=0.97", "--plot", tmp_path / "c.png") == 0
