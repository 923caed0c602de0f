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


@pytest.mark.parametrize("options", [["train.precision=bf16"], ["train.precision=fp16"],
                                     ["model.name=lenet", "train.channels_last=true", "train.precision=bf16"]])
def test_fast_path_on_cuda(cli, tiny_config, tmp_path, options):
    run = tmp_path / "run"
    assert cli("train", tiny_config(), "device=cuda", *options, "--run-dir", run, "-q") == 0
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    scaler = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["scaler"]
    assert bool(scaler) == ("train.precision=fp16" in options)  # a GradScaler for fp16 only


def test_fused_optimizers_on_cuda():
    from clrctl.config.schema import OptimizerConfig
    from clrctl.optim.optimizers import build_optimizer

    params = [torch.nn.Parameter(torch.zeros(3, device="cuda"))]
    for name in ("sgd", "adam", "adamw"):
        optimizer = build_optimizer(OptimizerConfig(name=name), params, 0.1)
        assert optimizer.defaults["fused"] is True


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_nccl_two_gpus(tiny_config, tmp_path):
    from test_distributed import spawn

    proc = spawn("train", tiny_config(), "device=cuda", "--nproc", "2", "--run-dir", tmp_path / "run", "-q")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (info["world_size"], info["backend"]) == (2, "nccl")
