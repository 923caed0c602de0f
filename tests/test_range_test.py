"""The range-test sweep, its run directory and the CLI, on a tiny synthetic task (seconds, CPU)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import yaml

import clrctl.rangetest.sweep as rt
from clrctl.engine import strategy
from clrctl.rangetest import suggest
from clrctl.cli import main
from clrctl.config.schema import load_config
from clrctl.runs.bounds import resolve_bounds_from

TINY = """
name: tiny-range-test
seed: 0
device: cpu
dataset: {name: synthetic, num_samples: 400, num_features: 16, num_classes: 4, batch_size: 32}
model: {name: mlp, hidden: [32]}
optimizer: {name: sgd, momentum: 0.9}
train: {epochs: 2}
range_test: {start_lr: 1.0e-3, end_lr: 3.0, mode: exp, steps: 4 epochs, eval_every: 4, eval_size: 64}
"""


@pytest.fixture
def cfg_path(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def cli(*args):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# -- pure pieces ----------------------------------------------------------------------------


def test_lr_schedule_matches_torch_lr_finder_formulas():
    assert rt.lr_at(0, 100, 1e-4, 1.0, "exp") == pytest.approx(1e-4)
    assert rt.lr_at(99, 100, 1e-4, 1.0, "exp") == pytest.approx(1.0)
    assert rt.lr_at(33, 100, 1e-4, 1.0, "exp") == pytest.approx(1e-4 * (1e4) ** (33 / 99))
    assert rt.lr_at(33, 100, 1e-4, 1.0, "linear") == pytest.approx(1e-4 + 33 / 99 * (1.0 - 1e-4))


def test_divergence_rule_handles_negative_losses():
    assert rt.diverged(4.1, 1.0, 4.0) and not rt.diverged(3.9, 1.0, 4.0)  # = smoothed > 4 x best
    assert not rt.diverged(-1.0, -2.0, 4.0)  # a negative loss rising a little: keep going
    assert rt.diverged(4.5, -2.0, 4.0)  # rose by more than 3 |best|
    assert not rt.diverged(-2.0, -2.0, 4.0)


# -- the sweep --------------------------------------------------------------------------------


def test_sweep_logs_every_step_and_leaves_the_callers_model_alone(cfg_path):
    cfg = load_config(cfg_path)
    setup = rt.prepare(cfg)
    before = {k: v.clone() for k, v in setup.model.state_dict().items()}
    rng = torch.get_rng_state()
    result = rt.sweep(setup)
    assert setup.model.state_dict().keys() == before.keys()
    assert all(torch.equal(setup.model.state_dict()[k], v) for k, v in before.items())  # never trained in place
    assert torch.equal(torch.get_rng_state(), rng)  # forked RNG: later inits are unaffected
    assert setup.steps == 4 * len(setup.data.train)
    rows = result.rows
    assert [r["step"] for r in rows] == list(range(result.steps))
    assert rows[0]["lr"] == pytest.approx(1e-3)
    ema = suggest.ema_debiased([r["loss"] for r in rows], cfg.range_test.smoothing)
    assert [r["smoothed_loss"] for r in rows] == pytest.approx(list(ema))
    evals = [r["step"] for r in rows if "val_acc" in r]
    assert evals[:3] == [0, 4, 8] and all(s % 4 == 0 or s == setup.steps - 1 for s in evals)
    assert all(r["momentum"] == 0.9 for r in rows)


def test_sweep_stops_at_once_on_nan(cfg_path, monkeypatch):
    setup = rt.prepare(load_config(cfg_path))
    real = strategy.forward_backward
    calls = []

    def nan_at_5(*args, **kwargs):
        calls.append(1)
        loss, logits = real(*args, **kwargs)
        return (loss * float("nan") if len(calls) == 6 else loss), logits

    monkeypatch.setattr(strategy, "forward_backward", nan_at_5)
    result = rt.sweep(setup)
    assert result.steps == 6 and result.stop_reason == "non-finite loss" and result.stopped_early
    assert math.isnan(result.rows[-1]["loss"]) and result.stop_lr == result.rows[-1]["lr"]


def test_sweep_stops_when_the_ema_diverges(cfg_path, monkeypatch):
    cfg = load_config(cfg_path, ["range_test.smoothing=0.5"])
    setup = rt.prepare(cfg)
    calls = []

    def loss_jumps(model, *args, **kwargs):
        calls.append(1)
        return torch.tensor(1.0 if len(calls) <= 10 else 100.0), None

    monkeypatch.setattr(strategy, "forward_backward", loss_jumps)
    result = rt.sweep(setup)
    assert result.stop_reason == "diverged" and result.steps == 11


# -- the CLI, end to end ------------------------------------------------------------------------


def test_cli_end_to_end_and_train_round_trip(cfg_path, tmp_path):
    run = tmp_path / "rt"
    assert cli("range-test", cfg_path, "--run-dir", run, "-q") == 0
    for name in ("config.yaml", "run.json", "metrics.csv", "summary.json", "suggested.yaml", "plots/range_test.png"):
        assert (run / name).is_file(), name
    rows = read_rows(run / "metrics.csv")
    assert list(rows[0]) == rt.METRIC_COLUMNS
    assert rows[0]["val_acc"] != "" and rows[1]["val_acc"] == ""  # eval rows only
    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == "range-test" and info["status"] == "completed"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == len(rows)
    for key in ("stopped_early", "stop_reason", "stop_lr", "elapsed_s"):
        assert key in summary
    s = summary["suggestion"]
    assert 0 < s["base_lr"] < s["max_lr"] and s["base_rule"] and s["max_rule"]
    assert all(set(e) == {"lr", "rule", "reason"} for e in s["candidates"].values())
    # The suggestion can be recomputed from the raw CSV alone.
    again = rt.suggest_from_rows(rows, summary["planned_steps"], 64)
    assert again["max_lr"] == pytest.approx(s["max_lr"]) and again["base_lr"] == pytest.approx(s["base_lr"])
    # suggested.yaml is a valid train config with those bounds.
    suggested = load_config(run / "suggested.yaml")
    assert suggested.policy.name == "triangular2"
    assert list(suggested.policy.bounds) == [pytest.approx(s["base_lr"], rel=1e-3), pytest.approx(s["max_lr"], rel=1e-3)]
    # bounds: {from: run} resolves to the same numbers, and a train run records them.
    resolved = resolve_bounds_from(load_config(cfg_path, [f"policy.bounds={{from: {run}}}", "policy.name=triangular"]))
    assert list(resolved.policy.bounds) == [s["base_lr"], s["max_lr"]]
    train_dir = tmp_path / "train"
    assert cli("train", cfg_path, f"policy.bounds={{from: {run}}}", "policy.name=triangular",
               "train.steps=20", "train.epochs=null", "--run-dir", train_dir, "-q") == 0
    recorded = yaml.safe_load((train_dir / "config.yaml").read_text())
    assert recorded["policy"]["bounds"] == [s["base_lr"], s["max_lr"]]


def test_seeds_layout_and_median(cfg_path, tmp_path):
    run = tmp_path / "rt3"
    assert cli("range-test", cfg_path, "--run-dir", run, "--seeds", "2", "-q", "range_test.steps=30") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    for seed in (0, 1):
        sub = json.loads((run / "seeds" / f"seed-{seed}" / "summary.json").read_text())
        assert len(read_rows(run / "seeds" / f"seed-{seed}" / "metrics.csv")) == sub["steps"]
    highs = [p["max_lr"] for p in summary["per_seed"]]
    assert summary["suggestion"]["max_lr"] == pytest.approx(sorted(highs)[0] if len(highs) == 1 else sum(highs) / 2)
    assert summary["suggestion"]["spread_decades"]["max_lr"] == pytest.approx(abs(math.log10(highs[0] / highs[1])))
    assert (run / "suggested.yaml").is_file() and (run / "plots" / "range_test.png").is_file()


@pytest.mark.parametrize("overrides", [["range_test.start_lr=5.0"], ["range_test.nope=1"], ["dataset.name=nope"],
                                       ["model.name=mlpp"], ["model.name=lenet"],  # lenet: needs images
                                       ["dataset.name=mnist", "dataset.root=/nonexistent"]])
def test_bad_config_exits_2_and_leaves_no_run_dir(cfg_path, tmp_path, overrides):
    run = tmp_path / "bad"
    assert cli("range-test", cfg_path, *overrides, "--run-dir", run, "-q") == 2
    assert not run.exists()


def test_interrupt_flushes_marks_and_exits_130(cfg_path, tmp_path, monkeypatch):
    real, calls = strategy.forward_backward, []

    def interrupt_at_7(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(strategy, "forward_backward", interrupt_at_7)
    run = tmp_path / "int"
    assert cli("range-test", cfg_path, "--run-dir", run, "-q") == 130
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stop_reason"] == "interrupted"
    assert len(read_rows(run / "metrics.csv")) == 7
    assert not (run / "suggested.yaml").exists()


@pytest.mark.slow
def test_digits_bounds_agree_across_three_seeds(tmp_path):
    """The bundled example (research E1): max_lr within half a decade over 3 seeds (~15 s)."""
    run = tmp_path / "digits"
    assert cli("range-test", "configs/digits-range-test.yaml", "--run-dir", run, "--seeds", "3", "-q") == 0
    s = json.loads((run / "summary.json").read_text())["suggestion"]
    assert s["spread_decades"]["max_lr"] < 0.5
    assert 0.05 < s["max_lr"] < 0.2 and 0.01 < s["base_lr"] < 0.05


def test_interrupt_in_a_later_seed_keeps_the_finished_ones(cfg_path, tmp_path, monkeypatch):
    real, calls = strategy.forward_backward, []
    steps = 20

    def interrupt_in_seed_1(*args, **kwargs):
        calls.append(1)
        if len(calls) == steps + 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(strategy, "forward_backward", interrupt_in_seed_1)
    run = tmp_path / "int2"
    assert cli("range-test", cfg_path, f"range_test.steps={steps}", "--seeds", "2", "--run-dir", run, "-q") == 130
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["seeds"] == [0, 1]
    assert [p["steps"] for p in summary["per_seed"]] == [steps, 2]
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
