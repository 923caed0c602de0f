"""TensorBoard events (``--tensorboard``, ``train.tensorboard``, ``clrctl export tensorboard``),
read back with tensorboard's EventAccumulator and compared with metrics.csv."""

from __future__ import annotations

import csv
import importlib.util

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _events(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return {e.step: e.value for e in acc.Scalars(tag)}


def _rows(path):
    with open(path / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _assert_matches_csv(acc, rows):
    loss, lr, val_acc = _scalars(acc, "loss"), _scalars(acc, "lr"), _scalars(acc, "val_acc")
    assert sorted(loss) == [int(r["step"]) for r in rows]
    for r in rows:
        assert loss[int(r["step"])] == pytest.approx(float(r["loss"]), rel=1e-6)
        assert lr[int(r["step"])] == pytest.approx(float(r["lr"]), rel=1e-6)
    evals = {int(r["step"]) + 1: float(r["val_acc"]) for r in rows if r["val_acc"]}
    assert evals and val_acc == pytest.approx(evals)
    assert set(_scalars(acc, "val_loss")) == set(evals)


def test_train_with_tensorboard_writes_the_csvs_scalars_and_hparams(cli, tiny_config, tmp_path):
    run = tmp_path / "run"
    assert cli("train", tiny_config(), "--tensorboard", "--run-dir", run, "-q") == 0
    acc = _events(run / "tensorboard")
    assert {"loss", "lr", "momentum", "val_loss", "val_acc"} <= set(acc.Tags()["scalars"])
    _assert_matches_csv(acc, _rows(run))
    hparams = _events(run / "tensorboard" / "hparams")
    assert "hparam/final_val_acc" in hparams.Tags()["scalars"]
    assert "tensorboard: true" in (run / "config.yaml").read_text()  # so --resume keeps writing events


def test_export_writes_the_same_events_from_the_csvs(cli, tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", tiny_config(), "--run-dir", run, "-q") == 0
    assert not (run / "tensorboard").exists()
    capsys.readouterr()
    assert cli("export", "tensorboard", run) == 0
    _assert_matches_csv(_events(run / "tensorboard"), _rows(run))
    out, err = capsys.readouterr()
    assert out == "" and err == f"wrote {run / 'tensorboard'}\n"  # (README: files written, on stderr)
    assert cli("export", "tensorboard", run) == 0  # again: replaced, not refused, not written twice
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    _assert_matches_csv(_events(run / "tensorboard"), _rows(run))
    assert [p.name for p in run.iterdir() if p.name.startswith(".") and p.name != ".lock"] == []  # no staging left behind


def test_export_of_a_multi_seed_range_test(cli, tiny_config, tmp_path):
    run = tmp_path / "rt"
    config = tiny_config("tiny-range-test", range_test={"steps": 30, "eval_every": 5})
    assert cli("range-test", config, "--seeds", "0,1", "--run-dir", run, "-q") in (0, 1)
    assert cli("export", "tensorboard", run) == 0  # (was: "no summary.json / metrics.csv")
    for seed in (0, 1):
        loss = _scalars(_events(run / "tensorboard" / f"seed-{seed}"), "range_test/loss")
        assert loss == pytest.approx({int(r["step"]): float(r["loss"]) for r in _rows(run / "seeds" / f"seed-{seed}")})
    assert "range_test/plot" in _events(run / "tensorboard" / "median").Tags()["images"]


def test_export_of_a_seed_group_and_per_group_lrs(cli, tiny_config, tmp_path):
    group = tmp_path / "group"
    config = tiny_config(optimizer={"name": "sgd", "momentum": 0.9,
                                    "groups": [{"name": "body"}, {"name": "head", "lr_mult": 10.0}]},
                         train={"epochs": 1, "eval_every": 5})
    assert cli("train", config, "--seeds", "0,1", "--run-dir", group, "-q") == 0
    assert cli("export", "tensorboard", group) == 0
    for seed in (0, 1):
        acc = _events(group / f"seed-{seed}" / "tensorboard")
        rows = _rows(group / f"seed-{seed}")
        _assert_matches_csv(acc, rows)
        head = _scalars(acc, "lr/head")
        assert head[0] == pytest.approx(10 * float(rows[0]["lr"]), rel=1e-6)


def test_range_test_with_tensorboard_writes_curves_plot_and_suggestion(cli, tiny_config, tmp_path):
    run = tmp_path / "rt"
    config = tiny_config("tiny-range-test", range_test={"steps": 60, "eval_every": 5, "mode": "exp",
                                                        "start_lr": 1e-3, "end_lr": 3.0})
    assert cli("range-test", config, "--tensorboard", "--run-dir", run, "-q") in (0, 1)
    acc = _events(run / "tensorboard")
    rows = _rows(run)
    loss = _scalars(acc, "range_test/loss")
    assert loss == pytest.approx({int(r["step"]): float(r["loss"]) for r in rows})
    assert "range_test/plot" in acc.Tags()["images"]
    assert "range_test/suggestion/text_summary" in acc.Tags()["tensors"]


def test_missing_tensorboard_is_one_line_before_any_run_directory(cli, tiny_config, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    run = tmp_path / "run"
    assert cli("train", tiny_config(), "train.tensorboard=true", "--run-dir", run, "-q") == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: train.tensorboard: the tensorboard package is not installed; "
                   "install it with: pip install 'clrctl[tensorboard]'")
    assert not run.exists()


def test_export_rejects_what_is_not_a_run(cli, tmp_path, capsys):
    assert cli("export", "tensorboard", tmp_path) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_sweep_tensorboard_writes_events_for_every_run(tmp_path, tiny_config):
    from conftest import run_cli

    config = tiny_config(train={"epochs": 1, "eval_every": 10})
    sweep = tmp_path / "s"
    assert run_cli("sweep", config, "--grid", "policy.name=triangular,triangular2", "--run-dir", sweep,
                   "--tensorboard", "-q") == 0
    events = {p.relative_to(sweep).parts[:2] for p in sweep.rglob("events.out.tfevents.*")}
    assert events == {("points", "policy-triangular"), ("points", "policy-triangular2")}
