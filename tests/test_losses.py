"""``train.label_smoothing``: torch's smoothed cross-entropy, in training and validation."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from clrctl.config.schema import TrainConfig
from clrctl.model.losses import build_loss


def test_label_smoothing_is_torchs():
    logits, y = torch.randn(16, 5, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 5
    smoothed = build_loss(TrainConfig(label_smoothing=0.1))
    assert smoothed(logits, y) == nn.CrossEntropyLoss(label_smoothing=0.1)(logits, y)
    assert build_loss(TrainConfig())(logits, y) == nn.functional.cross_entropy(logits, y)


def test_label_smoothing_raises_the_loss_floor_of_a_run(cli, tiny_config, tmp_path):
    final = {}
    for eps in (0.0, 0.2):
        run = tmp_path / f"run{eps}"
        assert cli("train", tiny_config(f"ls{eps}"), f"train.label_smoothing={eps}", "--run-dir", run, "-q") == 0
        with open(run / "epochs.csv") as f:
            final[eps] = list(csv.DictReader(f))[-1]
    assert float(final[0.2]["val_loss"]) > float(final[0.0]["val_loss"]) + 0.1
    assert float(final[0.2]["val_acc"]) > 0.85


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_label_smoothing_out_of_range_is_bad_input(cli, tiny_config, capsys, value):
    assert cli("validate", tiny_config(), f"train.label_smoothing={value}") == 2
    assert "train.label_smoothing" in capsys.readouterr().err


REGRESSION = '''
import torch

def linear(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=torch.Generator().manual_seed(7))
    def part(n):
        x = torch.randn(n, 6, generator=g)
        return x, x @ w + 0.1 * torch.randn(n, generator=g)
    return part(256), part(64)
'''


@pytest.fixture
def regression(tmp_path, monkeypatch, request):
    name = f"regression_{abs(hash(request.node.nodeid))}"
    (tmp_path / f"{name}.py").write_text(REGRESSION)
    monkeypatch.chdir(tmp_path)
    return {"name": f"{name}:linear", "batch_size": 32}


@pytest.mark.plots  # (it reads the plots: conftest skips them elsewhere)
def test_mse_trains_a_regression_with_blank_accuracy(cli, tiny_config, tmp_path, regression):
    run = tmp_path / "run"
    config = tiny_config(dataset=regression, train={"epochs": 3, "loss": "mse", "eval_every": 4},
                         policy={"name": "triangular", "bounds": [0.001, 0.01], "stepsize": 4})
    assert cli("train", config, "--run-dir", run) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final_val_acc"] is None and summary["best_val_acc"] is None
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    evals = [r for r in rows if r["val_loss"]]
    assert evals and all(r["val_acc"] == "" for r in rows)
    assert float(evals[-1]["val_loss"]) < 0.5 * float(evals[0]["val_loss"])
    with open(run / "epochs.csv") as f:
        assert all(r["train_acc"] == "" for r in csv.DictReader(f))
    assert (run / "plots" / "loss.png").is_file() and (run / "plots" / "accuracy.png").is_file()


def test_mse_range_test_falls_back_to_the_loss_rules(cli, tiny_config, tmp_path, regression):
    run = tmp_path / "rt"
    config = tiny_config("reg-range-test", dataset=regression, train={"loss": "mse"},
                         range_test={"steps": 80, "mode": "exp", "start_lr": 1e-4, "end_lr": 10.0})
    assert cli("range-test", config, "--run-dir", run, "-q") in (0, 1)
    suggestion = json.loads((run / "summary.json").read_text())["suggestion"]
    assert suggestion["candidates"]["accuracy_onset"]["lr"] is None
    assert suggestion["candidates"]["steepest"]["lr"] is not None


def test_loss_and_targets_must_agree(cli, tiny_config, tmp_path, regression, capsys):
    assert cli("train", tiny_config(dataset=regression), "--run-dir", tmp_path / "a", "-q") == 2
    assert "train.loss: cross_entropy needs class labels" in capsys.readouterr().err
    assert cli("train", tiny_config("digits"), "train.loss=mse", "--run-dir", tmp_path / "b", "-q") == 2
    assert "train.loss: mse needs float regression targets" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
