"""``dataset.name: module:callable``: the user's own data, as tensors or Datasets."""

from __future__ import annotations

import json
import textwrap

import pytest

from conftest import CONFIGS, REPO

MODULE = '''
import torch

def _task(n, seed=0):
    centres = 3.0 * torch.randn(4, 6, generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    return centres[y] + 0.5 * torch.randn(n, 6, generator=g), y

def tensors(seed=0):
    return _task(256, seed), _task(64, seed + 1)

def datasets():
    ds = torch.utils.data.TensorDataset
    return ds(*_task(256)), ds(*_task(64, 1))

def raises():
    raise RuntimeError("no such file: /data/train.npz")

def single():
    return _task(10)[0]

def mixed_labels():
    (x, y), (vx, vy) = tensors()
    return (x, y), (vx, vy.float())

def mixed_kinds():
    (x, y), val = tensors()
    return (x, y), torch.utils.data.TensorDataset(*val)

def bad_shapes():
    (x, y), (vx, vy) = tensors()
    return (x, y), (vx[:, :5], vy)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch, request):
    """A module of data callables in the working directory; its name is unique per test."""
    name = f"userdata_{abs(hash(request.node.nodeid))}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.chdir(tmp_path)
    return name


@pytest.mark.parametrize("kind", ["tensors", "datasets"])
def test_train_on_user_data_infers_classes_and_shape(cli, tiny_config, tmp_path, user_module, kind):
    config = tiny_config(dataset={"name": f"{user_module}:{kind}", "batch_size": 32, "num_workers": 0})
    run = tmp_path / "run"
    assert cli("train", config, "--run-dir", run, "-q") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final_val_acc"] > 0.9
    assert summary["steps"] == 2 * 8  # 256 samples / 32, two epochs
    assert json.loads((run / "run.json").read_text())["groups"][-1]["parameters"] == 4 * 32 + 4  # 4-class head


def test_tensor_and_dataset_paths_see_the_same_batches(cli, tiny_config, tmp_path, user_module):
    runs = []
    for kind in ("tensors", "datasets"):
        run = tmp_path / kind
        config = tiny_config(kind, dataset={"name": f"{user_module}:{kind}", "num_workers": 0})
        assert cli("train", config, "--run-dir", run, "-q") == 0
        runs.append((run / "metrics.csv").read_text())
    assert runs[0] == runs[1]


def test_num_classes_can_be_set(cli, tiny_config, tmp_path, user_module):
    run = tmp_path / "run"
    config = tiny_config(dataset={"name": f"{user_module}:tensors", "num_classes": 6})
    assert cli("train", config, "--run-dir", run, "-q") == 0
    assert json.loads((run / "run.json").read_text())["groups"][-1]["parameters"] == 6 * 32 + 6
    bad = tiny_config("bad", dataset={"name": f"{user_module}:tensors", "num_classes": 3})
    assert cli("train", bad, "--run-dir", tmp_path / "bad", "-q") == 2


@pytest.mark.parametrize("attr, message", [
    ("raises", "raised RuntimeError: no such file: /data/train.npz"),
    ("single", "expected a (train, val) pair"),
    ("mixed_labels", "mixes label types: train labels of torch.int64 (), val labels of torch.float32 ()"),
    ("mixed_kinds", "expected train and val both (x, y) tensor pairs or both Datasets"),
    ("bad_shapes", "train samples of shape (6,) but val samples of shape (5,)"),
    ("nope", "has no attribute 'nope'"),
])
def test_bad_user_data_is_one_line_naming_dataset_name(cli, tiny_config, tmp_path, user_module, capsys,
                                                        attr, message):
    config = tiny_config(dataset={"name": f"{user_module}:{attr}"})
    assert cli("train", config, "--run-dir", tmp_path / "run", "-q") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: dataset.name:") and message in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_unknown_dataset_name_still_lists_the_choices(cli, tiny_config, capsys):
    assert cli("validate", tiny_config(dataset={"name": "digit"})) == 2
    assert "'digits'" in capsys.readouterr().err


def test_bundled_example_trains(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the example module is imported from the project root
    run = tmp_path / "run"
    assert cli("train", CONFIGS / "custom-data.yaml", "device=cpu", "--run-dir", run, "-q") == 0
    assert json.loads((run / "summary.json").read_text())["final_val_acc"] > 0.9
