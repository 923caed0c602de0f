"""The bundled digits examples do what the README says they do."""

import json

import pytest

from conftest import CONFIGS


def test_triangular2_example_reaches_96_percent(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", CONFIGS / "digits-triangular2.yaml", "device=cpu", "--run-dir", run, "-q") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 8
    assert summary["final_val_acc"] >= 0.96


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fixed", "triangular", "exp_range", "one_cycle", "sgdr"])
def test_every_digits_example_trains_well(cli, tmp_path, name):
    run = tmp_path / "run"
    assert cli("train", CONFIGS / f"digits-{name}.yaml", "device=cpu", "--run-dir", run, "-q") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_val_acc"] >= 0.95
    for plot in ("lr.png", "loss.png", "accuracy.png"):
        assert (run / "plots" / plot).stat().st_size > 10_000
