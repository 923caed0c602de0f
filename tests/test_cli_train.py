"""``clrctl train / preview / validate`` end to end, through the real CLI."""

import csv
import json

import pytest
import torch
from torch.optim import lr_scheduler

from conftest import CONFIGS


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.plots  # (it reads the plots: conftest skips them elsewhere)
def test_train_writes_every_spec_file(cli, tiny_config, tmp_path):
    run = tmp_path / "run"
    assert cli("train", tiny_config(train={"epochs": 2, "eval_every": 5, "target": {"val_acc": 0.5}}),
               "--run-dir", run, "-q") == 0
    for name in ("config.yaml", "run.json", "metrics.csv", "epochs.csv", "summary.json",
                 "plots/lr.png", "plots/loss.png", "plots/accuracy.png", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == "train" and info["status"] == "completed"
    assert info["device"] == "cpu" and info["seed"] == 0 and info["end_time"]
    assert {"clrctl", "python", "torch", "torchvision", "cuda"} <= set(info["versions"])
    assert "commit" in info["git"] and "dirty" in info["git"]
    summary = json.loads((run / "summary.json").read_text())
    for key in ("status", "steps", "epochs", "elapsed_s", "final_val_acc", "best_val_acc", "best_step",
                "final_val_loss", "steps_to_target"):
        assert key in summary
    rows = read_rows(run / "metrics.csv")
    assert list(rows[0]) == ["step", "epoch", "lr", "momentum", "loss", "val_loss", "val_acc"]
    assert summary["steps"] == len(rows) == 2 * 22  # 1347 train images / 64 per batch -> 22 steps
    assert [int(r["step"]) for r in rows] == list(range(44))
    evals = [r for r in rows if r["val_acc"]]
    assert [int(r["step"]) + 1 for r in evals] == [5, 10, 15, 20, 22, 25, 30, 35, 40, 44]
    first_hit = next(int(r["step"]) + 1 for r in evals if float(r["val_acc"]) >= 0.5)
    assert summary["steps_to_target"] == first_hit
    assert summary["best_val_acc"] == max(float(r["val_acc"]) for r in evals)
    epochs = read_rows(run / "epochs.csv")
    assert list(epochs[0]) == ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "elapsed_s"]
    assert [(int(e["epoch"]), int(e["step"])) for e in epochs] == [(1, 22), (2, 44)]


def test_metrics_lr_column_equals_torch_cycliclr(cli, tiny_config, tmp_path):
    run = tmp_path / "run"
    assert cli("train", tiny_config(), "--run-dir", run, "-q") == 0
    lrs = [float(r["lr"]) for r in read_rows(run / "metrics.csv")]
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.02, momentum=0.9)
    sched = lr_scheduler.CyclicLR(opt, 0.02, 0.1, step_size_up=7, mode="triangular2", cycle_momentum=False)
    expected = []
    for _ in lrs:
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert {float(r["momentum"]) for r in read_rows(run / "metrics.csv")} == {0.9}


def test_one_cycle_run_trace_equals_torch(cli, tiny_config, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(policy={"name": "one_cycle", "bounds": [0.01, 0.2]}, train={"epochs": None, "steps": 30})
    assert cli("train", cfg, "--run-dir", run, "-q") == 0
    rows = read_rows(run / "metrics.csv")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.2, momentum=0.9)
    sched = lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=30, div_factor=20)
    for row in rows:
        assert float(row["lr"]) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        assert float(row["momentum"]) == pytest.approx(opt.param_groups[0]["momentum"], rel=1e-12)
        opt.step()
        sched.step()


def test_same_config_gives_byte_identical_metrics(cli, tiny_config, tmp_path):
    cfg = tiny_config(policy={"name": "exp_range", "bounds": [0.02, 0.1], "gamma": 0.99, "stepsize": 5})
    assert cli("train", cfg, "--run-dir", tmp_path / "a", "-q") == 0
    assert cli("train", cfg, "--run-dir", tmp_path / "b", "-q") == 0
    assert (tmp_path / "a/metrics.csv").read_bytes() == (tmp_path / "b/metrics.csv").read_bytes()
    assert cli("train", cfg, "seed=1", "--run-dir", tmp_path / "c", "-q") == 0
    assert (tmp_path / "a/metrics.csv").read_bytes() != (tmp_path / "c/metrics.csv").read_bytes()


def test_overrides_are_applied_and_recorded(cli, tiny_config, tmp_path):
    run = tmp_path / "run"
    assert cli("train", tiny_config(), "policy.name=fixed", "policy.bounds=[0.05, 0.1]", "train.epochs=1",
               "--run-dir", run, "-q") == 0
    import yaml

    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["policy"]["name"] == "fixed" and resolved["train"]["epochs"] == 1
    assert resolved["dataset"]["val_fraction"] == 0.25  # defaults are spelled out
    assert {float(r["lr"]) for r in read_rows(run / "metrics.csv")} == {0.05}


@pytest.mark.parametrize("args,needle", [
    (["policy.bounds=[0.1, 0.01]"], "policy.bounds: base_lr must be < max_lr"),
    (["policy.stepsize=0"], "policy.stepsize: must be positive"),
    (["policy.bound=[0.01, 0.1]"], "policy.bound: unknown key (did you mean 'bounds'?)"),
    (["dataset.name=imagenet"], "dataset.name:"),
    (["model.name=resnet21"], "did you mean 'resnet20'"),
    (["policy.name=triangle"], "policy.name:"),
    (["dataset.batch_size=0"], "dataset.batch_size:"),
    (["optimizer.momentum=abc"], "optimizer.momentum:"),
    (["notakey"], "expected key.path=value"),
])
def test_bad_config_exit_2_one_line_no_run_dir(cli, tiny_config, tmp_path, capsys, args, needle):
    run = tmp_path / "run"
    assert cli("train", tiny_config(), *args, "--run-dir", run) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not run.exists()


def test_missing_config_file_exit_2(cli, tmp_path, capsys):
    assert cli("train", tmp_path / "nope.yaml") == 2
    assert "config file not found" in capsys.readouterr().err


def test_existing_run_dir_is_never_overwritten(cli, tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    assert cli("train", tiny_config(), "--run-dir", run, "-q") == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["precious.txt"]


def test_default_run_dir_is_named_and_timestamped(cli, tiny_config, tmp_path):
    assert cli("train", tiny_config("named"), "train.epochs=1", "--runs-root", tmp_path / "runs", "-q") == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("named-") and len(run.name) == len("named-20260101-120000")


def test_seed_group(cli, tiny_config, tmp_path):
    group = tmp_path / "group"
    assert cli("train", tiny_config(), "train.epochs=1", "--seeds", "0,1", "--run-dir", group, "-q") == 0
    meta = json.loads((group / "group.json").read_text())
    assert meta["seeds"] == [0, 1] and meta["runs"] == ["seed-0", "seed-1"]
    for seed in (0, 1):
        info = json.loads((group / f"seed-{seed}" / "run.json").read_text())
        assert info["seed"] == seed and info["status"] == "completed"


def test_preview_matches_training_and_plots(cli, tmp_path, capsys):
    plot = tmp_path / "schedule.png"
    assert cli("preview", CONFIGS / "digits-triangular2.yaml", "--plot", plot, "--rows", "5") == 0
    out = capsys.readouterr().out
    assert "triangular2: 344 steps (43 per epoch, stepsize 86)" in out
    assert "0.0235" in out and plot.stat().st_size > 10_000


def test_validate_ok_and_bad(cli, capsys):
    assert cli("validate", CONFIGS / "digits-one_cycle.yaml") == 0
    assert "ok" in capsys.readouterr().out
    assert cli("validate", CONFIGS / "digits-one_cycle.yaml", "policy.bounds=[1, 0.1]") == 2


@pytest.mark.parametrize("name", ["fixed", "triangular", "triangular2", "exp_range", "one_cycle", "sgdr"])
def test_bundled_configs_validate(cli, name):
    assert cli("validate", CONFIGS / f"digits-{name}.yaml") == 0


def test_torchvision_configs_refuse_missing_data_cleanly(cli, tmp_path, capsys):
    code = cli("train", CONFIGS / "mnist-lenet-one_cycle.yaml", f"dataset.root={tmp_path}", "--runs-root",
               tmp_path / "runs")
    assert code == 2
    assert "dataset.root" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_digits_run_imports_nothing_it_does_not_use(tiny_config, tmp_path):
    """Start-up time (benchmarks/startup.py): digits needs neither sklearn (its split and data
    are clrctl's own) nor torchvision nor clrctl.compare; plots need no pyplot."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys
        from clrctl.cli import main
        try:
            main(["train", {str(tiny_config())!r}, "--run-dir", {str(tmp_path / "run")!r}, "-q"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        unused = ("sklearn", "scipy", "pandas", "torchvision", "clrctl.compare", "matplotlib.pyplot")
        print("UNUSED=" + ",".join(sorted(m for m in unused if m in sys.modules)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "UNUSED=\n" in out.stdout
    assert (tmp_path / "run" / "plots" / "loss.png").is_file()
