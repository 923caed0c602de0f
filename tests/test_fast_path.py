"""The GPU fast path on the CPU (issue 9): train.precision, channels_last, compile, fast
optimizer kernels. bf16/fp16 autocast and channels_last all run on the CPU."""

import csv
import json

import pytest
import torch

from clrctl.config.schema import OptimizerConfig, TrainConfig
from clrctl.optim.optimizers import build_optimizer
from clrctl.engine.step import FastPath


def losses(run):
    with open(run / "metrics.csv", newline="") as handle:
        return [float(r["loss"]) for r in csv.DictReader(handle)]


def test_precision_maps_to_autocast_and_amp_keeps_meaning_fp16():
    assert FastPath(TrainConfig(), torch.device("cpu")).dtype is None
    assert FastPath(TrainConfig(precision="bf16"), torch.device("cpu")).dtype is torch.bfloat16
    assert FastPath(TrainConfig(precision="fp16"), torch.device("cpu")).dtype is torch.float16
    assert TrainConfig(amp=True).autocast_dtype("cuda") == "float16"
    assert TrainConfig(amp=True).autocast_dtype("cpu") is None  # as before: amp is for CUDA
    assert FastPath(TrainConfig(precision="fp16"), torch.device("cpu")).scaler().is_enabled()
    assert not FastPath(TrainConfig(precision="bf16"), torch.device("cpu")).scaler().is_enabled()


def test_amp_with_another_precision_is_refused(cli, tiny_config, tmp_path, capsys):
    assert cli("train", tiny_config(), "train.amp=true", "train.precision=bf16", "--run-dir", tmp_path / "r") == 2
    assert "amp: true means precision: fp16" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_on_cpu(cli, tiny_config, tmp_path, precision):
    cfg = tiny_config(train={"epochs": 1, "eval_every": 10})
    assert cli("train", cfg, "--run-dir", tmp_path / "fp32", "-q") == 0
    assert cli("train", cfg, f"train.precision={precision}", "--run-dir", tmp_path / "low", "-q") == 0
    fp32, low = losses(tmp_path / "fp32"), losses(tmp_path / "low")
    assert low != fp32  # autocast did run
    assert low[-1] == pytest.approx(fp32[-1], rel=0.2)
    scaler = torch.load(tmp_path / "low" / "checkpoints" / "last.pt", weights_only=False)["scaler"]
    assert bool(scaler) == (precision == "fp16")  # a GradScaler for fp16 only


def test_channels_last_trains_an_image_model(cli, tiny_config, tmp_path):
    cfg = tiny_config(model={"name": "lenet"}, train={"epochs": 1, "eval_every": 10})
    assert cli("train", cfg, "--run-dir", tmp_path / "a", "-q") == 0
    assert cli("train", cfg, "train.channels_last=true", "--run-dir", tmp_path / "b", "-q") == 0
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-3)
    saved = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)
    assert not any(k.startswith("_orig_mod.") for k in saved["model"])


def test_sgd_takes_foreach_kernels_on_cpu():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert build_optimizer(OptimizerConfig(name="sgd"), params, 0.1).defaults["foreach"] is True
    assert not build_optimizer(OptimizerConfig(name="adam"), params, 0.1).defaults.get("fused")


@pytest.mark.slow
def test_compile_on_cpu(cli, tiny_config, tmp_path):
    cfg = tiny_config(train={"steps": 10, "eval_every": 5})
    assert cli("train", cfg, "--run-dir", tmp_path / "a", "-q") == 0
    assert cli("train", cfg, "train.compile=true", "--run-dir", tmp_path / "b", "-q") == 0
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-3)
    saved = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)
    assert not any(k.startswith("_orig_mod.") for k in saved["model"])  # the plain module
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["status"] == "completed"
