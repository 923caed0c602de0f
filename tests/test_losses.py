"""``train.label_smoothing``: torch's smoothed cross-entropy, in training and validation."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from clrctl.config import TrainConfig
from clrctl.losses import build_loss


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
