"""The bundled digits examples do what README.md and docs/ say they do."""

import json
from pathlib import Path

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


def test_fine_tuning_showcase_pretrains_then_fine_tunes_a_new_head(cli, tmp_path):
    """The fine-tuning commands of docs/fine-tuning.md: digits 0-5, then 6-9 in two stages."""
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    assert cli("train", CONFIGS / "digits-pretrain.yaml", "device=cpu", "--run-dir", pre, "-q") == 0
    assert cli("train", CONFIGS / "digits-finetune.yaml", "device=cpu", f"model.weights={pre}",
               "--run-dir", fine, "-q") == 0
    summary = json.loads((fine / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["head-only", "all"]
    assert summary["final_val_acc"] >= 0.95
    info = json.loads((fine / "run.json").read_text())
    assert info["weights"]["reinitialised"] == ["5.weight", "5.bias"]  # 6 classes -> 4: a new head


def test_ci_runs_exactly_the_readme_test_command():
    """`.ci/run` must run the README's test command as written, not a variant of it."""
    repo = Path(__file__).resolve().parents[1]
    ci_lines = (repo / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = next(line for line in ci_lines if "pytest" in line)
    assert command in (repo / "README.md").read_text(encoding="utf-8")
