"""CUDA paths: training on the GPU and mixed precision. Skipped on machines without CUDA."""

import json

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_train_on_cuda_with_amp(cli, tiny_config, tmp_path):
    run = tmp_path / "run"
    assert cli("train", tiny_config(), "device=cuda", "train.amp=true", "--run-dir", run, "-q") == 0
    info = json.loads((run / "run.json").read_text())
    assert info["device"].startswith("cuda")
    assert json.loads((run / "summary.json").read_text())["final_val_acc"] > 0.8


def test_cuda_resume_continues(cli, tiny_config, tmp_path):
    run = tmp_path / "run"
    assert cli("train", tiny_config(), "device=cuda", "--run-dir", run, "-q") == 0
    assert (run / "checkpoints" / "last.pt").is_file()


def test_auto_picks_cuda(cli, tiny_config, tmp_path):
    run = tmp_path / "run"
    assert cli("train", tiny_config(), "device=auto", "train.epochs=1", "--run-dir", run, "-q") == 0
    assert json.loads((run / "run.json").read_text())["device"].startswith("cuda")
