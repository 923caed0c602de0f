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


# -- precomputed features for a frozen body ------------------------------------------------------------


def _pretrained(cli, tiny_config, tmp_path):
    """A run on digits 0-5 whose weights the fine-tunes below start from (a new 4-class head)."""
    pre = tiny_config("pre", dataset={"name": "digits", "batch_size": 64, "classes": [0, 1, 2, 3, 4, 5]})
    if not (tmp_path / "pre").exists():
        assert cli("train", pre, "--run-dir", tmp_path / "pre", "-q") == 0
    return tmp_path / "pre"


def _finetune(tiny_config, tmp_path, weights, head_epochs=3, **sections):
    spec = {"dataset": {"name": "digits", "batch_size": 64, "classes": [6, 7, 8, 9]},
            "model": {"name": "mlp", "hidden": [32], "weights": str(weights)},
            "train": {"epochs": None, "eval_every": 5, "log_every": 5, "checkpoint_every": 0},
            "stages": [{"name": "head-only", "epochs": head_epochs, "freeze": ["body"],
                        "policy": {"name": "one_cycle", "bounds": [0.05, 0.5]}},
                       {"name": "all", "epochs": 1, "policy": {"name": "one_cycle", "bounds": [0.01, 0.1]}}]}
    for key, value in sections.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
    return tiny_config("ft", **spec)


def _close(a, b):
    """Two metrics.csv (or epochs.csv) files: the same rows, numbers equal within float rounding."""
    ra, rb = rows(a), rows(b)
    assert len(ra) == len(rb) and ra[0].keys() == rb[0].keys()
    for x, y in zip(ra, rb):
        for key in x:
            if key == "elapsed_s" or x[key] == y[key]:
                continue
            assert float(x[key]) == pytest.approx(float(y[key]), rel=1e-5, abs=1e-6), (key, x, y)


def _train_forwards(setup):
    """How many training-mode forwards the whole model gets (the head alone does not count)."""
    calls = []
    setup.model.register_forward_pre_hook(lambda m, args: calls.append(m.training))
    return calls


def _run(setup, path):
    from clrctl.runs.lifecycle import TrainingRun
    from clrctl.runs.rundir import RunDir

    run = RunDir.create(path.parent, "x", path)
    run.start("train", 0, "cpu")
    TrainingRun(setup, run).run_all()


@pytest.mark.parametrize("dropout", [None, 0.3])  # the head's dropout acts on the cached features alike
def test_a_head_only_stage_on_precomputed_features_equals_the_slow_path(cli, tiny_config, tmp_path, dropout):
    from clrctl.engine.setup import build_setup

    weights = _pretrained(cli, tiny_config, tmp_path)
    cfg = _finetune(tiny_config, tmp_path, weights, model={"dropout": dropout})
    fast, slow = (build_setup(load_config(cfg, [f"train.precompute={mode}"])) for mode in ("auto", "off"))
    assert [s["used"] for s in fast.precompute] == [True, False]
    assert [s["used"] for s in slow.precompute] == [False, False]
    fast_calls, slow_calls = _train_forwards(fast), _train_forwards(slow)
    _run(fast, tmp_path / "fast")
    _run(slow, tmp_path / "slow")
    spe = fast.steps_per_epoch
    assert fast_calls.count(True) == spe  # the body trains in stage 2 only: none in the 3 head-only epochs
    assert slow_calls.count(True) == 4 * spe
    _close(tmp_path / "fast" / "metrics.csv", tmp_path / "slow" / "metrics.csv")
    _close(tmp_path / "fast" / "epochs.csv", tmp_path / "slow" / "epochs.csv")
    for name in ("0.weight", "1.weight", "3.weight", "3.bias"):  # (mlp: Flatten, Linear, ReLU, Linear)
        if name in fast.model.state_dict():
            assert torch.allclose(fast.model.state_dict()[name], slow.model.state_dict()[name], atol=1e-6)


def test_on_precomputes_a_one_epoch_stage_too(cli, tiny_config, tmp_path):
    from clrctl.engine.setup import build_setup

    weights = _pretrained(cli, tiny_config, tmp_path)
    cfg = _finetune(tiny_config, tmp_path, weights, head_epochs=1)
    assert not build_setup(load_config(cfg), probe=False).precompute[0]["used"]
    for value in ("on", "true"):  # (YAML reads a bare on as true)
        assert build_setup(load_config(cfg, [f"train.precompute={value}"]), probe=False).precompute[0]["used"]
    assert cli("train", cfg, "train.precompute=on", "--run-dir", tmp_path / "on", "-q") == 0
    assert cli("train", cfg, "train.precompute=off", "--run-dir", tmp_path / "off", "-q") == 0
    _close(tmp_path / "on" / "metrics.csv", tmp_path / "off" / "metrics.csv")


def test_run_json_records_where_features_were_precomputed_and_why_not(cli, tiny_config, tmp_path):
    weights = _pretrained(cli, tiny_config, tmp_path)
    assert cli("train", _finetune(tiny_config, tmp_path, weights), "--run-dir", tmp_path / "run", "-q") == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())["precompute"]
    assert record["setting"] == "auto"
    assert [(s["stage"], s["used"]) for s in record["stages"]] == [("head-only", True), ("all", False)]
    assert record["stages"][1]["reason"] == "the stage freezes nothing"
    assert cli("train", _finetune(tiny_config, tmp_path, weights), "train.precompute=off",
               "--run-dir", tmp_path / "off", "-q") == 0
    off = json.loads((tmp_path / "off" / "run.json").read_text())["precompute"]
    assert off["setting"] == "off" and not any(s["used"] for s in off["stages"])


@pytest.mark.parametrize("override, reason", [
    ("stages.0.epochs=1", "one epoch: every sample passes through the body once either way"),
    ("dataset.augment=true", "dataset.augment: the body sees other crops each epoch"),
    ("stages.0.freeze=[]", "the stage freezes nothing"),
    ("train.precision=bf16", "train.precision / compile / channels_last"),
    ("train.precompute=off", "train.precompute: off"),
])
def test_auto_trains_the_slow_way_wherever_the_result_could_differ(cli, tiny_config, tmp_path, override, reason):
    from clrctl.engine.setup import build_setup

    weights = _pretrained(cli, tiny_config, tmp_path)
    setup = build_setup(load_config(_finetune(tiny_config, tmp_path, weights), [override]), probe=False)
    head_only = setup.precompute[0]
    assert not head_only["used"]
    assert head_only["reason"].startswith(reason), head_only


def test_a_body_with_training_batchnorm_is_not_precomputed_unless_bn_freeze(tmp_path, tiny_config):
    from clrctl.engine.setup import build_setup

    cfg = tiny_config("bn", model={"name": "resnet20"}, train={"epochs": None},
                      stages=[{"name": "head", "epochs": 2, "freeze": ["body"], "policy": {"name": "fixed", "lr": 0.01}}])
    plain = build_setup(load_config(cfg), probe=False).precompute[0]
    assert not plain["used"] and plain["reason"].startswith("BatchNorm in the body trains (bn;")
    frozen = build_setup(load_config(cfg, ["train.bn_freeze=true"]), probe=False).precompute[0]
    assert frozen["used"], frozen


def test_bn_freeze_keeps_the_frozen_bodys_statistics_and_releases_them_in_the_next_stage(tiny_config, tmp_path):
    from clrctl.engine.setup import build_setup
    from clrctl.track.reporter import Reporter
    from clrctl.runs.lifecycle import TrainingRun
    from clrctl.runs.rundir import RunDir

    cfg = tiny_config("bn", model={"name": "resnet20"}, dataset={"name": "digits", "batch_size": 256},
                      train={"epochs": None, "bn_freeze": True, "precompute": "off"},
                      stages=[{"name": "head", "epochs": 1, "freeze": ["body"], "policy": {"name": "fixed", "lr": 0.01}},
                              {"name": "all", "epochs": 1, "policy": {"name": "fixed", "lr": 0.01}}])
    setup = build_setup(load_config(cfg))
    before = setup.model.bn.running_mean.clone()
    after = {}

    class Snapshot(Reporter):
        def epoch(self, row):
            after[row["epoch"]] = setup.model.bn.running_mean.clone()

    run = RunDir.create(tmp_path, "x", tmp_path / "run")
    run.start("train", 0, "cpu")
    TrainingRun(setup, run, Snapshot()).run_all()
    assert torch.equal(after[1], before)  # eval mode in the frozen stage: statistics fixed
    assert not torch.equal(after[2], before)  # training mode again once the body trains


def test_a_torchvision_resnet18_head_trains_on_precomputed_features_as_on_the_slow_path(tiny_config, tmp_path):
    from clrctl.compat import import_torchvision
    from clrctl.engine.setup import build_setup

    _image_folder(tmp_path / "images", size=16, per_class=6)
    torch.save(import_torchvision().models.resnet18(num_classes=1000).state_dict(), tmp_path / "resnet18.pt")
    cfg = tiny_config(
        "tv", dataset={"name": "imagefolder", "root": str(tmp_path / "images"), "image_size": 16, "batch_size": 4,
                       "num_workers": 0, "val_fraction": 0.25, "drop_last": True},
        model={"name": "torchvision:resnet18", "weights": str(tmp_path / "resnet18.pt"), "dropout": 0.2},
        train={"epochs": None, "eval_every": 3, "bn_freeze": True},
        stages=[{"name": "head", "epochs": 2, "freeze": ["body"], "policy": {"name": "fixed", "lr": 0.01}},
                {"name": "all", "steps": 2, "policy": {"name": "fixed", "lr": 0.001}}])
    fast, slow = (build_setup(load_config(cfg, [f"train.precompute={mode}"])) for mode in ("auto", "off"))
    assert fast.precompute[0]["used"] and not slow.precompute[0]["used"]
    fast_calls = _train_forwards(fast)
    _run(fast, tmp_path / "fast")
    _run(slow, tmp_path / "slow")
    assert fast_calls.count(True) == 2  # the two steps of stage "all"
    _close(tmp_path / "fast" / "metrics.csv", tmp_path / "slow" / "metrics.csv")


def test_a_precomputed_stage_stopped_then_resumed_equals_the_uninterrupted_run(cli, tiny_config, tmp_path,
                                                                              reference_run):
    from clrctl.runs.training import resume_training, start_training

    weights = _pretrained(cli, tiny_config, tmp_path)
    cfg = _finetune(tiny_config, tmp_path, weights, model={"dropout": 0.2})
    reference = reference_run(cfg)
    with pytest.raises(Interrupted):  # inside the second head-only epoch: the features are computed again
        start_training(load_config(cfg), run_dir=tmp_path / "cut", callbacks=(StopAt(15),))
    resume_training(tmp_path / "cut")
    assert (tmp_path / "cut" / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()


@pytest.mark.parametrize("override, message", [
    ("train.precompute=fast", "train.precompute: Input should be 'auto', 'on' or 'off'"),
    ("train.bn_freeze=maybe", "train.bn_freeze:"),
])
def test_bad_precompute_values_are_one_line_exit_2(cli, tiny_config, tmp_path, capsys, override, message):
    assert cli("train", tiny_config(), override, "--run-dir", tmp_path / "run", "-q") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_validate_and_preview_show_each_stages_image_size(cli, tiny_config, capsys):
    cfg = tiny_config("sizes", model={"name": "resnet20"}, train={"epochs": None},
                      stages=[{**RESIZED[0], "dataset": {"image_size": 6}}, RESIZED[1]])
    assert cli("validate", cfg) == 0
    out = capsys.readouterr().out
    assert "stage small: one_cycle, 22 steps (0.01–0.1, images 6x6)" in out
    assert "stage full: one_cycle, 44 steps (0.005–0.05)" in out
