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


# -- progressive resizing ----------------------------------------------------------------------------


def write_cifar10(root, per_batch: int = 16, n_test: int = 24) -> None:
    """CIFAR-10's python pickles (5 training batches and the test batch) of random images."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name: str, n: int) -> None:
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": [int(v) for v in rng.integers(0, 10, n)]}))

    for i in range(1, 6):
        dump(f"data_batch_{i}", per_batch)
    dump("test_batch", n_test)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    """A tiny CIFAR-10 root (80 training images, 24 test images); torchvision's md5 check of
    the real archive's files reduced to "the file exists", as tests/test_data.py does."""
    import os

    from clrctl.compat import import_torchvision

    cifar_module = import_torchvision().datasets.cifar
    monkeypatch.setattr(cifar_module, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    write_cifar10(tmp_path / "cifar")
    return tmp_path / "cifar"


RESIZED = [{"name": "small", "epochs": 1, "dataset": {"image_size": 24}, "policy": {"name": "one_cycle", "bounds": [0.01, 0.1]}},
           {"name": "full", "epochs": 2, "policy": {"name": "one_cycle", "bounds": [0.005, 0.05]}}]


def _cifar_config(tiny_config, root, **sections):
    return tiny_config("resize", dataset={"name": "cifar10", "root": str(root), "batch_size": 16},
                       model={"name": "resnet20"}, train={"epochs": None, "eval_every": 3, "log_every": 2,
                                                          "checkpoint_every": 0},
                       stages=RESIZED, **sections)


def _shapes(setup):
    """The (training?, H, W) of every batch the model is called on, from now on."""
    seen = []
    setup.model.register_forward_pre_hook(lambda m, args: seen.append((m.training, *args[0].shape[-2:])))
    return seen


def test_cifar_trains_at_24_then_32_and_evaluates_at_each_stages_size(cifar, tiny_config, tmp_path):
    from clrctl.engine.setup import build_setup
    from clrctl.runs.lifecycle import TrainingRun
    from clrctl.runs.rundir import RunDir

    setup = build_setup(load_config(_cifar_config(tiny_config, cifar)))
    seen = _shapes(setup)
    run = RunDir.create(tmp_path, "x", tmp_path / "run")
    run.start("train", 0, "cpu")
    TrainingRun(setup, run).run_all()
    train = [(h, w) for training, h, w in seen if training]
    assert train == [(24, 24)] * 5 + [(32, 32)] * 10  # 80 images / 16: one epoch at 24, two at 32
    evals = [(h, w) for training, h, w in seen if not training]
    assert (24, 24) in evals and evals[-1] == (32, 32)
    assert [r["stage"] for r in rows(tmp_path / "run" / "epochs.csv")] == ["small", "full", "full"]


@pytest.mark.parametrize("stop_at", [5, 7])  # the resize boundary; inside the 32-pixel stage
def test_a_resized_run_stopped_then_resumed_equals_the_uninterrupted_one(cifar, tiny_config, tmp_path, stop_at,
                                                                        reference_run):
    from clrctl.runs.training import resume_training, start_training

    cfg = _cifar_config(tiny_config, cifar)
    reference = reference_run(cfg)
    with pytest.raises(Interrupted):
        start_training(load_config(cfg), run_dir=tmp_path / "cut", callbacks=(StopAt(stop_at),))
    resume_training(tmp_path / "cut")
    assert (tmp_path / "cut" / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()


def _image_folder(root, size=20, per_class=8):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog", "fox"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_an_image_folder_loads_at_each_stages_size_and_the_range_test_uses_the_stages(cli, tiny_config, tmp_path):
    from clrctl.engine.setup import build_setup
    from clrctl.rangetest.sweep import prepare
    from clrctl.runs.lifecycle import TrainingRun
    from clrctl.runs.rundir import RunDir

    _image_folder(tmp_path / "images")
    cfg = tiny_config(
        "folder", dataset={"name": "imagefolder", "root": str(tmp_path / "images"), "image_size": 24, "batch_size": 4,
                           "num_workers": 0, "val_fraction": 0.25, "drop_last": True},
        model={"name": "torchvision:resnet18"}, train={"epochs": None, "eval_every": 100},
        stages=[{"name": "small", "epochs": 1, "dataset": {"image_size": 16}, "policy": {"name": "fixed", "lr": 0.01}},
                {"name": "full", "epochs": 1, "policy": {"name": "fixed", "lr": 0.01}}])
    setup = build_setup(load_config(cfg))
    seen = _shapes(setup)
    run = RunDir.create(tmp_path, "x", tmp_path / "run")
    run.start("train", 0, "cpu")
    TrainingRun(setup, run).run_all()
    assert [(h, w) for training, h, w in seen if training] == [(16, 16)] * 4 + [(24, 24)] * 4  # 18 images / 4
    for stage, size in (("small", 16), ("full", 24)):
        x, _ = next(prepare(load_config(cfg), stage=stage).data.train.batches(0))
        assert tuple(x.shape[-2:]) == (size, size)
    assert cli("range-test", cfg, "--stage", "small", "--run-dir", tmp_path / "rt", "-q", "range_test.steps=4",
               "range_test.eval_every=1", "range_test.end_lr=0.001") in (0, 1)  # (too few steps for bounds)
    assert len(rows(tmp_path / "rt" / "metrics.csv")) == 4


@pytest.mark.parametrize("change, message", [
    ({"model": {"name": "mlp", "hidden": [16]}}, "stages.small.dataset.image_size: model mlp flattens its input at "
                                                  "the size it was built for (8x8), so it cannot train at 6x6"),
    ({"model": {"name": "lenet"}}, "stages.small.dataset.image_size: model lenet flattens its input"),
    ({"model": {"name": "slow_model:build", "args": {"delay_s": 0.0}}},
     "stages.small.dataset.image_size: model slow_model:build does not take 6x6 images: RuntimeError"),
    ({"dataset": {"name": "synthetic"}, "model": {"name": "mlp"}}, "stages.small.dataset.image_size: needs images (C, H, W); synthetic's "
                                         "samples have shape (32,)"),
    ({"stages": [{**RESIZED[0], "epochs": None, "steps": 4, "dataset": {"image_size": 6}}, RESIZED[1]]},
     "stages.small.dataset.image_size: stage 'full' starts at step 4, inside an epoch (22 steps)"),
    ({"stages": [{**RESIZED[0], "dataset": {"image_size": 0}}, RESIZED[1]]},
     "stages.0.dataset.image_size: Input should be greater than 0"),
    ({"stages": [{**RESIZED[0], "dataset": {"size": 6}}, RESIZED[1]]}, "stages.0.dataset.size: unknown key"),
])
def test_a_size_change_the_model_or_data_cannot_take_is_one_line_exit_2(cli, tiny_config, tmp_path, capsys,
                                                                         monkeypatch, change, message):
    from conftest import TESTS

    monkeypatch.syspath_prepend(str(TESTS))
    sections = {"model": {"name": "resnet20"}, "train": {"epochs": None},
                "stages": [{**RESIZED[0], "dataset": {"image_size": 6}}, RESIZED[1]]}
    sections.update(change)
    assert cli("train", tiny_config("bad", **sections), "--run-dir", tmp_path / "run", "-q") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
