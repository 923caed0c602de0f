"""The rest of fastai's fine-tuning recipe (issue 23): dropout before the classifier layer
(``model.dropout``), progressive resizing per stage (a stage's ``dataset.image_size`` /
``dataset.resize``), and precomputed features for a frozen body (``train.precompute``)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from clrctl.config.schema import ModelConfig, load_config
from clrctl.engine.callbacks import StopAt
from clrctl.errors import Interrupted
from clrctl.model.build import HeadDropout, build_model, head_module


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# -- model.dropout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, shape", [("mlp", (64,)), ("lenet", (1, 8, 8)), ("resnet20", (3, 8, 8)),
                                         ("torchvision:resnet18", (3, 32, 32))])
def test_dropout_sits_before_the_classifier_layer_and_keeps_the_state_dict(name, shape):
    plain = build_model(ModelConfig(name=name), shape, 4)
    torch.manual_seed(0)
    dropped = build_model(ModelConfig(name=name, dropout=0.5), shape, 4)
    assert list(dropped.state_dict()) == list(plain.state_dict())  # pretrained weights load as before
    head = dropped.get_submodule(head_module(dropped))
    assert isinstance(head.dropout, HeadDropout) and head.dropout.p == 0.5
    before, after = [], []  # the head's input ahead of its dropout, and what the head gets
    head.register_forward_pre_hook(lambda module, args: before.append(args[0].detach().clone()), prepend=True)
    head.register_forward_pre_hook(lambda module, args: after.append(args[0].detach().clone()))
    dropped.train()
    dropped(torch.randn(8, *shape))
    kept = after[0] != 0
    live = before[0] != 0
    assert 0.3 < 1 - kept[live].float().mean() < 0.7  # about half the live features dropped,
    assert torch.allclose(after[0][kept], before[0][kept] / 0.5)  # the rest scaled by 1 / (1 - p)
    dropped.eval()
    x = torch.randn(8, *shape)
    assert torch.equal(dropped(x), dropped(x))  # evaluation: no dropout


def test_dropout_changes_training_and_runs_are_repeatable_by_seed(cli, tiny_config, tmp_path):
    cfg = tiny_config("drop", model={"name": "mlp", "hidden": [32], "dropout": 0.3})
    plain = tiny_config("plain")
    for name, config in (("a", cfg), ("b", cfg), ("plain", plain)):
        assert cli("train", config, "--run-dir", tmp_path / name, "-q") == 0
    a, b, p = ((tmp_path / n / "metrics.csv").read_bytes() for n in ("a", "b", "plain"))
    assert a == b
    assert a != p
    assert cli("train", cfg, "seed=1", "--run-dir", tmp_path / "seed1", "-q") == 0
    assert (tmp_path / "seed1" / "metrics.csv").read_bytes() != a


def test_dropout_resumes_exactly_after_a_stop_mid_epoch_and_after_a_kill(tiny_config, tmp_path, reference_run):
    from conftest import KilledAt
    from clrctl.runs.training import resume_training, start_training

    cfg = tiny_config("drop", model={"name": "mlp", "hidden": [32], "dropout": 0.4},
                      train={"epochs": 3, "eval_every": 5, "log_every": 5, "checkpoint_every": 0})
    reference = reference_run(cfg)
    with pytest.raises(Interrupted):  # mid-epoch 2: the interrupt's checkpoint is there
        start_training(load_config(cfg), run_dir=tmp_path / "cut", callbacks=(StopAt(30),))
    resume_training(tmp_path / "cut")
    assert (tmp_path / "cut" / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    start_training(load_config(cfg), run_dir=ref, callbacks=(KilledAt(50, ref, killed),))  # epoch 2's checkpoint
    assert json.loads((killed / "run.json").read_text())["status"] == "running"
    resume_training(killed)
    assert (killed / "metrics.csv").read_bytes() == (ref / "metrics.csv").read_bytes()
    assert (ref / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()


@pytest.mark.parametrize("value, message", [
    ("1.0", "model.dropout: Input should be less than 1"),
    ("-0.1", "model.dropout: Input should be greater than or equal to 0"),
    ("true", "model.dropout:"),
    ("half", "model.dropout:"),
])
def test_bad_dropout_is_one_line_exit_2_and_no_run_dir(cli, tiny_config, tmp_path, capsys, value, message):
    assert cli("train", tiny_config(), f"model.dropout={value}", "--run-dir", tmp_path / "run", "-q") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_dropout_on_a_user_model_is_refused(cli, tiny_config, tmp_path, capsys, monkeypatch):
    from conftest import TESTS

    monkeypatch.syspath_prepend(str(TESTS))
    cfg = tiny_config("user", model={"name": "slow_model:build", "dropout": 0.5})
    assert cli("train", cfg, "--run-dir", tmp_path / "run", "-q") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model.dropout: applies to the built-in and torchvision: models") and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
