"""Loading sides: run directories, groups (group.json, subdirectories, globs), labels, baseline."""

from __future__ import annotations

import math

import pytest

from clrctl.compare.curves import aggregate, train_curves
from clrctl.series import moving_average
from clrctl.compare.runs import load_side, load_sides, read_columns
from clrctl.errors import InputError
from test_compare_support import make_group, make_run


def test_blank_cells_are_nan(tmp_path):
    path = make_run(tmp_path / "r", {1: 0.5}, steps=3)
    columns = read_columns(path / "metrics.csv")
    assert columns["step"].tolist() == [0.0, 1.0, 2.0]
    assert math.isnan(columns["val_acc"][0]) and columns["val_acc"][1] == 0.5


def test_group_json_order_and_seeds(tmp_path):
    group = make_group(tmp_path / "g", {2: {9: 0.9}, 0: {9: 0.8}}, steps=10)
    side = load_side(str(group))
    assert side.is_group and side.label == "g" and side.seeds == [2, 0]


def test_interrupted_and_failed_runs_are_terminal_and_loadable(tmp_path):
    for status in ("interrupted", "failed", "diverged"):
        assert load_side(str(make_run(tmp_path / status, {9: 0.9}, steps=10, status=status))).runs[0].status == status


def test_unknown_status_is_refused(tmp_path):
    with pytest.raises(InputError, match="unknown status"):
        load_side(str(make_run(tmp_path / "r", {9: 0.9}, steps=10, status="paused")))


def test_directory_of_non_runs_is_refused(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match="not a clrctl run directory"):
        load_side(str(tmp_path / "empty"))


def test_same_names_get_distinct_labels(tmp_path):
    a = make_group(tmp_path / "a", {0: {9: 0.9}}, steps=10) / "seed-0"
    b = make_group(tmp_path / "b", {0: {9: 0.9}}, steps=10) / "seed-0"
    sides, _ = load_sides([str(a), str(b)])
    assert [s.label for s in sides] == ["a/seed-0", "b/seed-0"]


def test_baseline_may_be_an_extra_run(tmp_path):
    a, b, c = (make_run(tmp_path / n, {9: 0.9}, steps=10) for n in "abc")
    sides, index = load_sides([str(a), str(b)], baseline=str(c))
    assert [s.label for s in sides] == ["c", "a", "b"] and index == 0
    sides, index = load_sides([str(a), str(b)], baseline=str(tmp_path / "." / "b"))
    assert index == 1


def test_group_curves_are_median_with_a_min_max_band(tmp_path):
    group = make_group(tmp_path / "g", {0: {4: 0.5, 9: 0.7}, 1: {4: 0.6, 9: 0.8}, 2: {4: 0.9, 9: 0.9}}, steps=10)
    curve = train_curves(load_side(str(group))).panels["val_acc"]
    assert curve.x.tolist() == [5.0, 10.0]
    assert curve.y.tolist() == [0.6, 0.8]
    assert curve.low.tolist() == [0.5, 0.7] and curve.high.tolist() == [0.9, 0.9]


def test_moving_average_and_single_series():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 3).tolist() == [2.0, 3.0, 5.0, 6.0]  # centered, shrinks at edges
    assert moving_average([1.0, float("nan"), 5.0, 7.0], 3).tolist() == [1.0, 3.0, 6.0, 6.0]  # NaN skipped
    assert moving_average([1.0, 3.0], 1).tolist() == [1.0, 3.0]
    single = aggregate([([1.0, 2.0], [3.0, 4.0])])
    assert single.low is None
