"""``clrctl train CONFIG --seeds S --vectorize``: a seed group trained as one stacked model
(torch.func), its group directory the ordinary one, each seed as if trained alone."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import TESTS, copy_run, run_cli
from clrctl.engine.callbacks import Callback
from clrctl.engine.stack import ModelStack, clip_per_model

# vmap's batched kernels are not bit-identical to one model's: the worst relative difference of
# a first-epoch loss measured on the digits MLP is ~1e-6 (float32 rounding); this leaves room.
REL_TOL = 1e-4


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _rel(a: str, b: str) -> float:
    if a == b:
        return 0.0
    x, y = float(a), float(b)
    return abs(x - y) / max(abs(y), 1e-12)


def _vectorized(config: Path, where: Path, seeds: str = "0..2", *extra: str) -> tuple[int, Path]:
    code = run_cli("train", config, "--seeds", seeds, "--vectorize", "--run-dir", where, "-q", *extra)
    return code, where


def _first_epoch_worst(vec_seed: Path, alone: Path) -> float:
    """The worst relative difference of the first epoch's losses and evaluations of two runs."""
    ours, theirs = _rows(vec_seed / "metrics.csv"), _rows(alone / "metrics.csv")
    assert len(ours) == len(theirs)
    worst = 0.0
    for a, b in zip(ours, theirs):
        if a["epoch"] != "1":
            break
        assert (a["step"], a["lr"], a["momentum"]) == (b["step"], b["lr"], b["momentum"])
        for key in ("loss", "val_loss"):
            if b[key]:
                worst = max(worst, _rel(a[key], b[key]))
        assert a["val_acc"] == b["val_acc"] or abs(float(a["val_acc"]) - float(b["val_acc"])) <= 1 / 450
    return worst


def test_each_seed_of_a_vectorized_group_trains_as_alone(tiny_config, reference_run, tmp_path, cli):
    config = tiny_config()
    alone = reference_run(config, "--seeds", "0..2")
    code, group = _vectorized(config, tmp_path / "vec")
    assert code == 0
    info = json.loads((group / "group.json").read_text())
    assert info["seeds"] == [0, 1, 2] and info["vectorized"] is True
    finals, spread = [], []
    for seed in (0, 1, 2):
        ours, theirs = group / f"seed-{seed}", alone / f"seed-{seed}"
        for name in ("config.yaml", "run.json", "metrics.csv", "epochs.csv", "summary.json",
                     "checkpoints/last.pt", "checkpoints/best.pt"):
            assert (ours / name).is_file(), name
        run = json.loads((ours / "run.json").read_text())
        assert run["status"] == "completed" and run["vectorized"] is True and run["seed"] == seed
        assert _first_epoch_worst(ours, theirs) < REL_TOL
        # the whole run too (two epochs of a tiny model: differences stay at float rounding)
        assert [r["step"] for r in _rows(ours / "metrics.csv")] == [r["step"] for r in _rows(theirs / "metrics.csv")]
        finals.append(json.loads((ours / "summary.json").read_text())["final_val_acc"])
        spread.append(json.loads((theirs / "summary.json").read_text())["final_val_acc"])
        # last.pt holds this seed's own, unstacked weights: loadable into the model alone
        saved = torch.load(ours / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
        theirs_saved = torch.load(theirs / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
        assert {k: v.shape for k, v in saved["model"].items()} == {k: v.shape for k, v in theirs_saved["model"].items()}
        for key, value in saved["model"].items():
            assert torch.allclose(value, theirs_saved["model"][key], rtol=1e-3, atol=1e-5), key
        assert saved["model"][next(iter(saved["model"]))].untyped_storage().nbytes() == \
            theirs_saved["model"][next(iter(theirs_saved["model"]))].untyped_storage().nbytes()
    low, high = min(spread), max(spread)
    assert all(low - 1 / 450 <= f <= high + 1 / 450 for f in finals), (finals, spread)
    # compare reads the vectorised group exactly as a sequential one
    assert cli("compare", alone, group) == 0


def test_a_bundled_config_vectorized_matches_the_sequential_group(reference_run, tmp_path):
    """configs/digits-triangular2.yaml (two epochs): each seed's first epoch within REL_TOL."""
    config = TESTS.parent / "configs" / "digits-triangular2.yaml"
    alone = reference_run(config, "--seeds", "0,1", "train.epochs=2")
    code, group = _vectorized(config, tmp_path / "vec", "0,1", "train.epochs=2")
    assert code == 0
    for seed in (0, 1):
        assert _first_epoch_worst(group / f"seed-{seed}", alone / f"seed-{seed}") < REL_TOL


@pytest.mark.parametrize("optimizer", [{"name": "adamw", "weight_decay": 0.01}, {"name": "adam"},
                                       {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}])
def test_optimizers_and_per_model_clipping_train_each_seed_as_alone(optimizer, tiny_config, tmp_path):
    """SGD (Nesterov, weight decay), Adam, AdamW with train.clip_grad_norm: each seed's own
    gradient norm (metrics.csv grad_norm) is clipped, as when it trains alone."""
    config = tiny_config("opt", optimizer=optimizer, train={"epochs": 1, "clip_grad_norm": 0.5, "eval_every": 5})
    code, group = _vectorized(config, tmp_path / "vec", "0,1")
    assert code == 0
    assert run_cli("train", config, "--seeds", "0,1", "--run-dir", tmp_path / "alone", "-q") == 0
    for seed in (0, 1):
        ours, theirs = group / f"seed-{seed}", tmp_path / "alone" / f"seed-{seed}"
        assert _first_epoch_worst(ours, theirs) < REL_TOL
        norms = [(a["grad_norm"], b["grad_norm"]) for a, b in zip(_rows(ours / "metrics.csv"),
                                                                  _rows(theirs / "metrics.csv"))]
        assert norms and max(_rel(a, b) for a, b in norms) < REL_TOL


def _mlps(k: int) -> list[nn.Module]:
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)))
    return models


@pytest.mark.parametrize("name,kwargs", [
    ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "foreach": True}),
    ("Adam", {"lr": 0.01, "weight_decay": 1e-3}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.05}),
])
def test_torch_optimizers_on_the_stacked_parameters_step_each_model_as_alone(name, kwargs):
    """SGD (momentum, Nesterov, weight decay), Adam and AdamW are elementwise: one step of the
    stack is each model's own step, slice by slice (and per-model clipping is clip_grad_norm_'s)."""
    models = _mlps(3)
    stack = ModelStack(_mlps(3))
    alone = [getattr(torch.optim, name)(m.parameters(), **kwargs) for m in models]
    stacked = getattr(torch.optim, name)(stack.holder.parameters(), **kwargs)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        grads = {n: torch.randn(p.shape, generator=gen) * 3 for n, p in stack.params().items()}
        for k, (model, opt) in enumerate(zip(models, alone)):
            for n, p in model.named_parameters():
                p.grad = grads[n][k].clone()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
            opt.step()
        for n, p in stack.params().items():
            p.grad = grads[n].clone()
        clip_per_model(list(stack.holder.parameters()), 1.0)
        stacked.step()
    for k, model in enumerate(models):
        for n, p in model.named_parameters():
            assert torch.allclose(stack.params()[n][k], p, rtol=1e-6, atol=1e-7), (name, k, n)
    # the optimizer state as one model's: what its checkpoint holds
    own = getattr(torch.optim, name)(models[1].parameters(), **kwargs)
    ModelStack.optimizer_state_of(stacked, own, 1)
    for p_own, p_alone in zip(models[1].parameters(), models[1].parameters()):
        for key, value in alone[1].state[p_alone].items():
            assert torch.allclose(own.state[p_own][key], value, rtol=1e-6, atol=1e-7), key


def _user_model(tiny_config, name: str, factory: str, **sections):
    return tiny_config(name, model={"name": f"vector_models:{factory}"}, **sections)


@pytest.mark.parametrize("case", ["nproc", "batchnorm", "optimizer", "untraceable", "accumulate", "no-seeds",
                                  "dropout"])
def test_what_cannot_be_vectorized_is_refused_before_any_directory(case, tiny_config, tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.syspath_prepend(str(TESTS))
    root = tmp_path / "runs"
    args = {
        "nproc": (tiny_config(), "--seeds", "0,1", "--nproc", "2"),
        "batchnorm": (_user_model(tiny_config, "bn", "batchnorm"), "--seeds", "0,1"),
        "optimizer": (tiny_config("rms", optimizer={"name": "rmsprop"}), "--seeds", "0,1"),
        "untraceable": (_user_model(tiny_config, "dd", "untraceable"), "--seeds", "0,1"),
        "accumulate": (tiny_config("acc", train={"epochs": 1, "accumulate": 2}), "--seeds", "0,1"),
        "no-seeds": (tiny_config(),),
        "dropout": (tiny_config("drop", model={"name": "mlp", "hidden": [32], "dropout": 0.2}), "--seeds", "0,1"),
    }[case]
    code = run_cli("train", *args, "--vectorize", "--runs-root", root, "-q")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert not root.exists() or not any(root.iterdir())
    expected = {"nproc": "--nproc", "batchnorm": "BatchNorm", "optimizer": "rmsprop", "untraceable": "cannot be vectorised",
                "accumulate": "train.accumulate", "no-seeds": "--seeds", "dropout": "model.dropout"}[case]
    assert expected in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err


def test_a_diverging_seed_is_marked_and_the_others_train_on(tiny_config, tmp_path, monkeypatch):
    """Seed 1's loss is NaN from its first step: it is 'diverged', leaves the stack, and seeds 0
    and 2 train exactly as they do alone (nothing of the NaN reaches them)."""
    monkeypatch.syspath_prepend(str(TESTS))
    # (a flush every 4 steps: seed 1 leaves the stack in the middle of the first epoch)
    config = _user_model(tiny_config, "nan", "nan_for_seed", train={"epochs": 2, "eval_every": 5, "log_every": 4})
    code, group = _vectorized(config, tmp_path / "vec")
    assert code == 1  # a group with a seed that did not complete
    assert run_cli("train", config, "--seeds", "0,2", "--run-dir", tmp_path / "alone", "-q") == 0
    diverged = json.loads((group / "seed-1" / "run.json").read_text())
    assert diverged["status"] == "diverged"
    summary = json.loads((group / "seed-1" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at"]["step"] == 0 and summary["steps"] == 1
    for seed in (0, 2):
        ours, theirs = group / f"seed-{seed}", tmp_path / "alone" / f"seed-{seed}"
        assert json.loads((ours / "run.json").read_text())["status"] == "completed"
        assert _first_epoch_worst(ours, theirs) < REL_TOL
        a, b = _rows(ours / "epochs.csv"), _rows(theirs / "epochs.csv")
        assert len(a) == len(b) == 2
        assert _rel(a[-1]["train_loss"], b[-1]["train_loss"]) < 1e-3


def _steady(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


def test_ctrl_c_stops_the_group_with_130_and_resume_equals_the_uninterrupted_group(tiny_config, tmp_path,
                                                                                  signal_cli_at):
    config = tiny_config(train={"epochs": 2, "eval_every": 5, "checkpoint_every": 0})
    code, full = _vectorized(config, tmp_path / "full")
    assert code == 0
    signal_cli_at(30, signal.SIGINT, label="seeds 0..2")  # mid-epoch 2 (22 steps an epoch)
    code, group = _vectorized(config, tmp_path / "cut")
    assert code == 130
    for seed in (0, 1, 2):
        run = json.loads((group / f"seed-{seed}" / "run.json").read_text())
        assert run["status"] == "interrupted"
        assert len(_rows(group / f"seed-{seed}" / "metrics.csv")) == 30
    assert run_cli("train", "--resume", group, "-q") == 0
    _same_group(group, full)


def _same_group(group: Path, full: Path) -> None:
    for seed in (0, 1, 2):
        ours, theirs = group / f"seed-{seed}", full / f"seed-{seed}"
        assert json.loads((ours / "run.json").read_text())["status"] == "completed"
        assert _rows(ours / "metrics.csv") == _rows(theirs / "metrics.csv")
        assert _steady(_rows(ours / "epochs.csv")) == _steady(_rows(theirs / "epochs.csv"))
        a = torch.load(ours / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]
        b = torch.load(theirs / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in b)


class _KilledGroupAt(Callback):
    """The group directory copied right after ``step`` (every seed's checkpoint writes done):
    what a ``kill -9`` of the process there leaves."""

    def __init__(self, step: int, group: Path, killed: Path):
        self.step, self.group, self.killed = step, group, killed

    def on_start(self, loop) -> None:
        loop.sync_at([self.step])

    def on_flush(self, loop, rows, diverged) -> None:
        if loop.state.step == self.step:
            from clrctl.runs.checkpoints import Checkpoints

            for view in loop.group.views:
                next(c for c in view.callbacks if isinstance(c, Checkpoints)).run.wait()
            copy_run(self.group, self.killed)


def test_a_killed_group_resumes_to_the_uninterrupted_group(tiny_config, tmp_path, monkeypatch):
    from clrctl.runs.lifecycle import TrainingRun

    config = tiny_config(train={"epochs": 2, "eval_every": 5, "checkpoint_every": 0})
    real = TrainingRun.callbacks
    group, killed = tmp_path / "full", tmp_path / "killed"

    def callbacks(self, reporter):
        found = real(self, reporter)
        return found + [_KilledGroupAt(27, group, killed)] if getattr(reporter, "label", "").startswith("seeds") \
            else found

    monkeypatch.setattr(TrainingRun, "callbacks", callbacks)
    assert _vectorized(config, group)[0] == 0
    monkeypatch.setattr(TrainingRun, "callbacks", real)
    for seed in (0, 1, 2):
        assert json.loads((killed / f"seed-{seed}" / "run.json").read_text())["status"] == "running"
    assert run_cli("train", "--resume", killed, "-q") == 0
    _same_group(killed, group)


@pytest.mark.plots
def test_every_seed_of_a_vectorized_group_gets_its_plots(tiny_config, tmp_path):
    """The seeds' plots are drawn at once (forked processes) before each status is set."""
    code, group = _vectorized(tiny_config(train={"epochs": 1}), tmp_path / "vec", "0,1")
    assert code == 0
    for seed in (0, 1):
        for name in ("lr.png", "loss.png", "accuracy.png"):
            assert (group / f"seed-{seed}" / "plots" / name).read_bytes()[:4] == b"\x89PNG", name
        assert json.loads((group / f"seed-{seed}" / "run.json").read_text())["status"] == "completed"


def test_early_stopping_stops_each_seed_on_its_own(tiny_config, tmp_path):
    """Each seed stops when its own validation stops improving (as alone) and leaves the
    stack; the others train on. Same steps, stop reasons and final accuracies as alone."""
    config = tiny_config("early", train={"epochs": 6, "eval_every": 3, "early_stop": {"patience": 2}})
    code, group = _vectorized(config, tmp_path / "vec")
    assert code == 0
    assert run_cli("train", config, "--seeds", "0..2", "--run-dir", tmp_path / "alone", "-q") == 0
    steps = []
    for seed in (0, 1, 2):
        ours = json.loads((group / f"seed-{seed}" / "summary.json").read_text())
        theirs = json.loads((tmp_path / "alone" / f"seed-{seed}" / "summary.json").read_text())
        assert (ours["status"], ours["steps"], ours.get("stop_reason")) == \
            (theirs["status"], theirs["steps"], theirs.get("stop_reason"))
        assert abs(ours["final_val_acc"] - theirs["final_val_acc"]) <= 1 / 450
        steps.append(ours["steps"])
    assert min(steps) < ours["planned_steps"], steps  # (the config does stop early)


def test_range_test_seeds_vectorized_sweep_each_seed_as_alone(tmp_path):
    """``range-test --seeds 2 --vectorize``: the sequential sweep's files; each seed's curve
    matches its sweep alone while the LR is moderate (near divergence tiny float differences
    grow, as between any two machines), and the suggested bounds agree."""
    import math

    config = TESTS.parent / "configs" / "digits-range-test.yaml"
    alone = tmp_path / "alone"
    assert run_cli("range-test", config, "--seeds", "2", "--run-dir", alone, "-q") == 0
    vec = tmp_path / "vec"
    assert run_cli("range-test", config, "--seeds", "2", "--vectorize", "--run-dir", vec, "-q") == 0
    for seed in (0, 1):
        ours, theirs = _rows(vec / "seeds" / f"seed-{seed}" / "metrics.csv"), \
            _rows(alone / "seeds" / f"seed-{seed}" / "metrics.csv")
        assert list(ours[0]) == list(theirs[0])
        for a, b in zip(ours[:100], theirs[:100]):
            assert a["lr"] == b["lr"] and _rel(a["loss"], b["loss"]) < REL_TOL
        assert (vec / "seeds" / f"seed-{seed}" / "summary.json").is_file()
    a = json.loads((vec / "summary.json").read_text())["suggestion"]
    b = json.loads((alone / "summary.json").read_text())["suggestion"]
    for key in ("base_lr", "max_lr"):
        assert abs(math.log10(a[key] / b[key])) < 0.2, (key, a[key], b[key])
    assert (vec / "suggested.yaml").is_file() and json.loads((vec / "run.json").read_text())["status"] == "completed"


def test_range_test_vectorize_refuses_what_it_cannot_stack(tiny_config, tmp_path, capsys):
    root = tmp_path / "runs"
    config = tiny_config("rt", optimizer={"name": "rmsprop"})
    assert run_cli("range-test", config, "--seeds", "2", "--vectorize", "--runs-root", root, "-q") == 2
    assert "rmsprop" in capsys.readouterr().err and not root.exists()
