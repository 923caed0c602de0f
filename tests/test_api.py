"""The notebook API: ``from clrctl import lr_find, train`` on the user's own model and data."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from clrctl import lr_find, train
from clrctl.errors import ConfigError


def _task(n: int = 512, seed: int = 0):
    """A learnable 3-class task of 8 features."""
    g = torch.Generator().manual_seed(seed)
    centres = 2.5 * torch.randn(3, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return centres[y] + 0.7 * torch.randn(n, 8, generator=g), y


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))


def test_import_clrctl_does_not_import_torch():
    code = "import sys, clrctl; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_lr_find_on_tensors_leaves_model_and_rng_untouched():
    model = _model().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    found = lr_find(model, _task(), start_lr=1e-4, end_lr=10.0, steps=60)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training  # its mode too
    assert found.steps == len(found.records["lr"]) <= 60
    assert found.records["lr"][0] == pytest.approx(1e-4)
    assert np.all(np.diff(found.records["lr"]) > 0)
    assert np.isnan(found.records["val_acc"]).all()  # no validation data: loss rules only
    assert set(found.suggestion) >= {"base_lr", "max_lr", "candidates", "reason", "warnings"}
    assert found.suggestion["candidates"]["steepest"]["lr"] is not None


def test_lr_find_with_train_val_loaders_uses_accuracy_rules():
    x, y = _task(768)
    ds = torch.utils.data.TensorDataset
    train_dl = torch.utils.data.DataLoader(ds(x[:512], y[:512]), batch_size=32, shuffle=True)
    val_dl = torch.utils.data.DataLoader(ds(x[512:], y[512:]), batch_size=128)
    model = _model()
    found = lr_find(model, (train_dl, val_dl), optimizer={"name": "sgd", "momentum": 0.9},
                    start_lr=1e-3, end_lr=10.0, steps="4 epochs", eval_every=8)
    acc = found.records["val_acc"]
    assert np.isfinite(acc).sum() >= 5 and np.nanmax(acc) > 0.8
    assert found.records["momentum"][0] == pytest.approx(0.9)
    assert found.base_lr is not None and found.base_lr < found.max_lr
    block = found.to_config()
    assert block["name"] == "triangular2" and block["bounds"][0] < block["bounds"][1]
    fig = found.plot()
    assert len(fig.axes) == 2
    import matplotlib.pyplot as plt

    _, ax = plt.subplots()
    assert found.plot(ax=ax) is ax.figure
    plt.close("all")


def test_lr_find_with_a_torch_optimizer_keeps_its_state_and_group_ratios():
    model = _model()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                           {"params": model[3].parameters(), "lr": 0.01}], lr=0.1, momentum=0.5)
    found = lr_find(model, _task(), optimizer=opt, steps=10)
    assert opt.state == {} and opt.param_groups[0]["lr"] == 0.1
    assert found.records["momentum"][0] == pytest.approx(0.5)
    factory = functools.partial(torch.optim.Adam, betas=(0.8, 0.99))
    assert lr_find(model, _task(), optimizer=factory, steps=5).records["momentum"][0] == pytest.approx(0.8)


def test_lr_find_rejects_bad_input_in_one_line():
    with pytest.raises(ConfigError, match="data must be"):
        lr_find(_model(), [1, 2, 3])
    with pytest.raises(ConfigError, match="range_test.start_lr"):
        lr_find(_model(), _task(), start_lr=1.0, end_lr=0.1)
    with pytest.raises(ConfigError, match="same, non-zero number"):
        lr_find(_model(), (torch.zeros(4, 8), torch.zeros(3, dtype=torch.long)))


def test_train_runs_a_config_with_overrides(tmp_path):
    config = {"name": "api", "dataset": {"name": "synthetic", "num_samples": 256},
              "policy": {"name": "triangular", "bounds": [0.01, 0.1], "stepsize": 4}}
    path, summary = train(config, runs_root=tmp_path, train__epochs=1, **{"dataset.batch_size": 64})
    assert path.parent == tmp_path and summary["status"] == "completed"
    assert json.loads((path / "summary.json").read_text())["status"] == "completed"
    assert "batch_size: 64" in (path / "config.yaml").read_text()


def test_lr_find_on_a_regression_with_its_own_loss_and_a_dataset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(384, 8, generator=g)
    y = x @ torch.randn(8, generator=g) + 0.1 * torch.randn(384, generator=g)
    train_ds = torch.utils.data.TensorDataset(x[:256], y[:256])
    found = lr_find(nn.Linear(8, 1), (train_ds, (x[256:], y[256:])), loss_fn=lambda out, t: nn.functional.mse_loss(
        out.squeeze(1), t), start_lr=1e-4, end_lr=10.0, steps=60, eval_every=5)
    assert np.isfinite(found.records["val_loss"]).sum() >= 5
    assert np.isnan(found.records["val_acc"]).all()  # float targets: no accuracy
    assert found.suggestion["candidates"]["loss_min"]["lr"] is not None
