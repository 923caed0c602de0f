"""What the loop does to stay cheap keeps its results: alike parameter groups merged (and old
checkpoints still resume), train accuracy counted at the flush, last.pt written at most every
``train.checkpoint_every`` seconds with best.pt kept until then, and a plain CSV writer; and
``train.skip_nonfinite`` really skips the optimizer step."""

from __future__ import annotations

import copy
import csv
import json

import torch
from torch import nn

from clrctl.engine import step as trainer
from clrctl.config.schema import OptimizerConfig
from clrctl.optim.groups import build_groups, load_optimizer_state, torch_param_groups
from clrctl.optim.optimizers import build_optimizer
from clrctl.runs.rundir import CsvLog


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _steps(model: nn.Module, optimizer: torch.optim.Optimizer, n: int) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(n):
        x, y = torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


# -- parameter groups ------------------------------------------------------------------------------


def test_groups_that_train_alike_share_one_torch_group():
    model = _mlp()
    cfg = OptimizerConfig(weight_decay=1e-4, no_decay=["bias", "norm"])
    merged = torch_param_groups(build_groups(model, cfg), model, cfg)
    assert [(g["name"], g["weight_decay"]) for g in merged] == [("body+head", 1e-4), ("body+head", 0.0)]
    assert sum(len(g["params"]) for g in merged) == len(list(model.parameters()))
    apart = OptimizerConfig(groups=[{"name": "body", "lr_mult": 0.1}, {"name": "head"}])
    assert [g["name"] for g in torch_param_groups(build_groups(model, apart), model, apart)] == ["body", "head"]


def test_merged_groups_train_exactly_like_separate_ones():
    cfg = OptimizerConfig(momentum=0.9, weight_decay=1e-3, no_decay=["bias"])
    weights = {}
    for merge in (False, True):
        model = _mlp()
        groups = torch_param_groups(build_groups(model, cfg), model, cfg, merge=merge)
        _steps(model, build_optimizer(cfg, groups, 0.1), 5)
        weights[merge] = model.state_dict()
    for name, value in weights[True].items():
        assert torch.equal(value, weights[False][name]), name


def test_an_optimizer_state_saved_before_merging_still_loads():
    cfg = OptimizerConfig(momentum=0.9, no_decay=["bias"])
    old_model = _mlp()
    unmerged = torch_param_groups(build_groups(old_model, cfg), old_model, cfg, merge=False)
    old = build_optimizer(cfg, unmerged, 0.1)
    _steps(old_model, old, 3)
    saved = copy.deepcopy(old.state_dict())  # as read from disk: torch's load aliases same-device tensors
    assert len(saved["param_groups"]) == 4  # body/head x decay/no decay

    model = _mlp()
    model.load_state_dict(old_model.state_dict())
    optimizer = build_optimizer(cfg, torch_param_groups(build_groups(model, cfg), model, cfg), 0.1)
    load_optimizer_state(optimizer, saved, torch_param_groups(build_groups(model, cfg), model, cfg, merge=False))
    by_name = dict(model.named_parameters())
    old_by_name = dict(old_model.named_parameters())
    for name, param in by_name.items():
        assert torch.equal(optimizer.state[param]["momentum_buffer"], old.state[old_by_name[name]]["momentum_buffer"])
    # and both continue alike
    _steps(old_model, old, 2)
    _steps(model, optimizer, 2)
    assert all(torch.equal(p, old_by_name[n]) for n, p in by_name.items())


# -- skip_nonfinite --------------------------------------------------------------------------------


def test_skip_nonfinite_leaves_the_weights_alone():
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.tensor([[float("nan"), 1.0, 2.0]]), torch.tensor([1])
    loss, _ = trainer.forward_backward(model, optimizer, x, y, nn.CrossEntropyLoss(), skip_nonfinite=True)
    assert not torch.isfinite(loss)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert optimizer.state == {}  # no step taken: no momentum buffer holding NaN either
    trainer.forward_backward(model, optimizer, x.nan_to_num(), y, nn.CrossEntropyLoss(), skip_nonfinite=True)
    assert not torch.equal(model.weight, before["weight"])


def test_skip_nonfinite_run_keeps_training(cli, tiny_config, tmp_path, monkeypatch):
    """A batch with a NaN input is skipped; the model after it still learns."""
    from clrctl.data.sources import TensorSource

    real = TensorSource.batches

    def one_poisoned(self, epoch, start=0):
        for index, (x, y) in enumerate(real(self, epoch, start), start=start):
            if self.shuffle and epoch == 0 and index == 3:
                x = x.clone()
                x[0, 0, 0, 0] = float("nan")
            yield x, y

    monkeypatch.setattr(TensorSource, "batches", one_poisoned)
    run = tmp_path / "run"
    assert cli("train", tiny_config(), "train.skip_nonfinite=true", "--run-dir", run, "-q") == 0
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert rows[3]["loss"] == "nan" and all(r["loss"] != "nan" for r in rows[4:])
    assert json.loads((run / "summary.json").read_text())["final_val_acc"] > 0.8


# -- accuracy, checkpoints, CSV --------------------------------------------------------------------


def _epochs_without_time(run) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in csv.DictReader(open(run / "epochs.csv"))]


def test_train_accuracy_is_the_same_however_its_counts_are_batched(cli, tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config(train={"epochs": 2, "log_every": 7})
    assert cli("train", cfg, "--run-dir", tmp_path / "at-flush", "-q") == 0
    monkeypatch.setattr(trainer.Hits, "HELD_LIMIT", 1)  # counted at every step instead
    assert cli("train", cfg, "--run-dir", tmp_path / "each-step", "-q") == 0
    flushed, each = _epochs_without_time(tmp_path / "at-flush"), _epochs_without_time(tmp_path / "each-step")
    assert flushed == each and 0.5 < float(flushed[-1]["train_acc"]) <= 1.0


def test_last_pt_at_most_every_checkpoint_every_seconds_and_best_pt_kept(cli, tiny_config, tmp_path, monkeypatch):
    from clrctl.runs.rundir import RunDir

    written = []
    real = RunDir.save_checkpoint
    monkeypatch.setattr(RunDir, "save_checkpoint", lambda self, payload, name, **kw: (written.append(name),
                                                                                        real(self, payload, name, **kw)))
    cfg = tiny_config(train={"epochs": 4})
    assert cli("train", cfg, "train.checkpoint_every=0", "--run-dir", tmp_path / "every", "-q") == 0
    assert written.count("last.pt") == 4
    written.clear()
    assert cli("train", cfg, "train.checkpoint_every=3600", "--run-dir", tmp_path / "hourly", "-q") == 0
    assert written.count("last.pt") == 1 and written.count("best.pt") == 1  # at the end of the run
    summary = json.loads((tmp_path / "hourly" / "summary.json").read_text())
    best = torch.load(tmp_path / "hourly" / "checkpoints" / "best.pt", weights_only=False)
    assert (best["step"], best["val_acc"]) == (summary["best_step"], summary["best_val_acc"])
    same = torch.load(tmp_path / "every" / "checkpoints" / "best.pt", weights_only=False)
    assert all(torch.equal(v, same["model"][k]) for k, v in best["model"].items())


def test_csv_rows_keep_their_format(tmp_path):
    log = CsvLog(tmp_path / "m.csv", ["step", "lr", "loss", "val_acc", "stage"])
    log.write([{"step": 0, "lr": 0.1, "loss": 2.302585092994046, "stage": "a,b"},
               {"step": 1, "lr": 1e-05, "loss": float("nan"), "val_acc": None, "extra": 1}])
    log.close()
    assert (tmp_path / "m.csv").read_text() == (
        "step,lr,loss,val_acc,stage\n0,0.1,2.302585092994046,,\"a,b\"\n1,1e-05,nan,,\n")
