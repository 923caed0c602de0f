"""clrctl export mlflow into a real MLflow store (a sqlite file in tmp_path, no mocks): a tiny
training run, a seed group and a sweep, read back with ``MlflowClient`` / ``mlflow.search_runs``
and compared with their files; exporting again adds nothing; a run still being written; a bad
path and a missing package. The runs are trained and exported once for the module (importing
mlflow takes a second or two)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli

pytestmark = pytest.mark.filterwarnings("ignore:.*noload.*:DeprecationWarning")  # (MLflow's own SQLAlchemy use)

needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None,
    reason="mlflow is not installed: pip install -e '.[dev]' (or 'clrctl[mlflow]') to run these tests")

TINY = {
    "name": "tiny", "seed": 0, "device": "cpu",
    "dataset": {"name": "digits", "batch_size": 64},
    "model": {"name": "mlp", "hidden": [32]},
    "optimizer": {"name": "sgd", "momentum": 0.9},
    "policy": {"name": "triangular2", "bounds": [0.02, 0.1], "stepsize": 7},
    "train": {"epochs": 2, "eval_every": 5},
}


@contextmanager
def inside(path: Path):
    """MLflow puts a new experiment's artifacts under ./mlruns: keep them in the test's directory."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def export(root: Path, *args) -> int:
    with inside(root):
        return run_cli("export", "mlflow", *args, "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}")


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A run, a seed group (2 seeds) and a 2-point sweep, trained and exported once."""
    root = tmp_path_factory.mktemp("mlflow")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY, sort_keys=False))
    assert run_cli("train", config, "--run-dir", root / "run") == 0
    assert run_cli("train", config, "--seeds", "0,1", "--run-dir", root / "group") == 0
    assert run_cli("sweep", config, "--grid", "policy.stepsize=7,11", "--run-dir", root / "sweep", "-j", "2") == 0
    assert export(root, root / "run", root / "group", root / "sweep") == 0
    from mlflow.tracking import MlflowClient

    return root, MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def all_runs(client, experiment: str = "tiny"):
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=1000)


def by_path(client, path: Path, experiment: str = "tiny"):
    (run,) = [r for r in all_runs(client, experiment) if r.data.tags.get("clrctl.path") == str(path.resolve())]
    return run


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@needs_mlflow
def test_a_run_reads_back_as_its_files(store):
    root, client = store
    path = root / "run"
    run = by_path(client, path)
    info, summary = json.loads((path / "run.json").read_text()), json.loads((path / "summary.json").read_text())
    config = yaml.safe_load((path / "config.yaml").read_text())
    assert run.info.status == "FINISHED" and run.data.tags["clrctl.status"] == "completed"
    assert run.info.run_name == "run" and run.data.tags["clrctl.kind"] == "train"
    # params: the resolved config, flattened
    params = run.data.params
    assert params["policy.bounds"] == "[0.02, 0.1]" and params["optimizer.momentum"] == "0.9"
    assert params["policy.name"] == "triangular2" and params["model.hidden"] == "[32]"
    assert params["train.target"] == "null" and params["model.args"] == "{}"
    assert len(params) == sum(len(section) if isinstance(section, dict) and section else 1
                              for section in config.values())
    # metrics by step, exactly the CSVs' values
    metrics = rows(path / "metrics.csv")
    assert history(client, run.info.run_id, "loss") == [(int(r["step"]), float(r["loss"])) for r in metrics]
    assert history(client, run.info.run_id, "lr") == [(int(r["step"]), float(r["lr"])) for r in metrics]
    assert history(client, run.info.run_id, "val_acc") == [(int(r["step"]) + 1, float(r["val_acc"]))
                                                           for r in metrics if r["val_acc"]]
    epochs = rows(path / "epochs.csv")
    assert history(client, run.info.run_id, "epoch/train_loss") == [(int(r["step"]), float(r["train_loss"]))
                                                                    for r in epochs]
    # the summary's numbers as final metrics, at the last step
    assert history(client, run.info.run_id, "final_val_acc") == [(summary["steps"], summary["final_val_acc"])]
    assert run.data.metrics["best_step"] == summary["best_step"]
    assert "steps_to_target" not in run.data.metrics  # (null: not reached)
    # artifacts: the plots and the config
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "plots")) == \
        sorted(f"plots/{p.name}" for p in (path / "plots").iterdir())
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]
    started = info["start_time"]
    import datetime

    assert run.info.start_time == datetime.datetime.fromisoformat(started).timestamp() * 1000


@needs_mlflow
def test_a_seed_group_is_a_parent_with_one_child_per_seed(store):
    root, client = store
    parent = by_path(client, root / "group")
    children = [r for r in all_runs(client) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["seed-0", "seed-1"]
    assert sorted(r.data.tags["clrctl.seed"] for r in children) == ["0", "1"]
    assert parent.data.tags["clrctl.kind"] == "group" and parent.info.status == "FINISHED"
    finals = [json.loads((root / "group" / f"seed-{s}" / "summary.json").read_text())["final_val_acc"] for s in (0, 1)]
    assert parent.data.metrics["final_val_acc"] == pytest.approx(statistics.median(finals))
    assert parent.data.params["policy.bounds"] == "[0.02, 0.1]"
    for child in children:
        seed_dir = root / "group" / child.info.run_name
        assert history(client, child.info.run_id, "loss") == [(int(r["step"]), float(r["loss"]))
                                                              for r in rows(seed_dir / "metrics.csv")]


@needs_mlflow
def test_a_sweep_exports_all_its_runs_under_one_experiment(store):
    root, client = store
    runs = all_runs(client, "sweep")  # (the sweep directory's name)
    points = json.loads((root / "sweep" / "sweep.json").read_text())["points"]
    assert sorted(r.info.run_name for r in runs) == sorted(p["name"] for p in points)  # one seed: a run each
    assert sorted(r.data.tags["clrctl.point"] for r in runs) == sorted(p["name"] for p in points)
    assert {r.data.tags["clrctl.sweep"] for r in runs} == {"sweep"}
    assert sorted(r.data.params["policy.stepsize"] for r in runs) == ["11", "7"]
    for run in runs:
        path = root / "sweep" / "points" / run.info.run_name
        assert history(client, run.info.run_id, "loss") == [(int(r["step"]), float(r["loss"]))
                                                            for r in rows(path / "metrics.csv")]


@needs_mlflow
def test_exporting_again_updates_the_same_runs(store, capsys):
    root, client = store
    before = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "loss")) for r in all_runs(client)}
    assert export(root, root / "run", root / "group") == 0
    assert capsys.readouterr().err.count("updated ") == 4
    after = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "loss")) for r in all_runs(client)}
    assert after == before  # the same runs, not one metric value more
    assert len(history(client, by_path(client, root / "run").info.run_id, "final_val_acc")) == 1


@needs_mlflow
def test_a_run_still_written_is_exported_as_far_as_it_is_then_completed(store, capsys):
    from clrctl.runs.rundir import claim, release

    root, client = store
    live = root / "live"
    shutil.copytree(root / "run", live)
    full = (live / "metrics.csv").read_text()
    lines = full.splitlines(keepends=True)
    (live / "metrics.csv").write_text("".join(lines[:11]) + lines[11][:7])  # 10 rows, the 11th cut short
    (live / "epochs.csv").write_text("".join((root / "run" / "epochs.csv").read_text().splitlines(True)[:2]))
    info = json.loads((live / "run.json").read_text())
    (live / "run.json").write_text(json.dumps({**info, "status": "running", "end_time": None}))
    summary = (live / "summary.json").read_text()
    (live / "summary.json").unlink()
    claim(live)  # this process writes it now: is_live
    try:
        assert export(root, live, "--experiment", "live") == 0
    finally:
        release(live)
    assert "still running" in capsys.readouterr().err
    run = by_path(client, live, "live")
    assert run.info.status == "RUNNING" and run.data.tags["clrctl.status"] == "running"
    assert [s for s, _ in history(client, run.info.run_id, "loss")] == list(range(10))
    # the run ends: exporting again adds the rest to the same run
    (live / "metrics.csv").write_text(full)
    (live / "epochs.csv").write_text((root / "run" / "epochs.csv").read_text())
    (live / "run.json").write_text(json.dumps(info))
    (live / "summary.json").write_text(summary)
    assert export(root, live, "--experiment", "live") == 0
    (again,) = all_runs(client, "live")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert history(client, run.info.run_id, "loss") == [(int(r["step"]), float(r["loss"]))
                                                        for r in rows(live / "metrics.csv")]
    assert len(client.get_metric_history(run.info.run_id, "epoch/val_acc")) == 2


@needs_mlflow
def test_a_bad_path_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "missing", tmp_path / "empty"):
        assert export(tmp_path, bad) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(bad) in err and "not a run directory" in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_without_mlflow_one_line_names_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what find_spec and import see when it is not installed
    assert run_cli("export", "mlflow", tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'clrctl[mlflow]'" in err


@needs_mlflow
def test_export_mlflow_never_imports_torch(store):
    root, _ = store
    code = textwrap.dedent(f"""
        import os, sys
        os.chdir({str(root)!r})
        from clrctl.cli import main
        try:
            main(["export", "mlflow", {str(root / "run")!r}, "--tracking-uri", "sqlite:///mlflow.db"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        print("HEAVY=" + ",".join(m for m in ("torch", "torchvision", "matplotlib") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert "HEAVY=\n" in out.stdout
