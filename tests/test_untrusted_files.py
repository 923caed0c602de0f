"""Files clrctl reads but did not just write (issue 17, parts 1 and 7): a ``.pt`` file is
loaded as data only — a crafted pickle runs no code wherever a ``.pt`` is read — and a run
whose files were cut short, emptied or replaced is repaired where that is safe, refused
with one line naming the file (exit 2) where it is not.

Every case goes through the real CLI with real files; the malicious file is a real pickle
whose ``__reduce__`` would create a marker file if it were ever unpickled with code.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clrctl.files import checkpoint


class RunsCode:
    """Unpickled with code allowed, this runs ``touch MARKER``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def make_malicious(path: Path, marker: Path) -> None:
    """``path`` (a .pt file) with a code-running object added beside its contents."""
    saved = torch.load(path, weights_only=False) if path.is_file() else {}  # (our own file: trusted here)
    if not isinstance(saved, dict) or "model" not in saved:
        saved = {"model": saved}
    saved["extra"] = RunsCode(marker)
    torch.save(saved, path)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def set_status(run: Path, status: str) -> None:
    info = json.loads((run / "run.json").read_text())
    info["status"] = status
    (run / "run.json").write_text(json.dumps(info))


@pytest.fixture
def resumable(cli, tiny_config, tmp_path):
    """A run stopped at its epoch-1 checkpoint (step 22) with epoch 2 still to do: trained for
    one epoch, then given two (as an interrupted two-epoch run is; see test_robustness)."""

    def make(name: str = "run") -> Path:
        run = tmp_path / name
        assert cli("train", tiny_config("one", train={"epochs": 1, "eval_every": 5}), "--run-dir", run, "-q") == 0
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["train"]["epochs"] = 2
        (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        set_status(run, "interrupted")
        (run / "summary.json").unlink()
        return run

    return make


# -- part 1: no code from a checkpoint -----------------------------------------------------


@pytest.mark.parametrize("command, target", [
    ("resume", "last.pt"),
    ("validate", "best.pt"),  # model.weights = a run directory: its best.pt ...
    ("validate", "last.pt"),  # ... else its last.pt
    ("validate", "file"),  # model.weights = a file
    ("train", "last.pt"),
    ("range-test", "last.pt"),
    ("resume-group", "last.pt"),
])
def test_a_pt_file_that_would_run_code_is_refused_everywhere(cli, tiny_config, resumable, tmp_path, capsys,
                                                             command, target):
    marker = tmp_path / "MARKER"
    run = resumable()
    if command == "resume-group":  # a seed of a seed group, resumed through its group
        group = tmp_path / "group"
        group.mkdir()
        shutil.move(run, group / "seed-0")
        run = group / "seed-0"
        (group / "group.json").write_text(json.dumps({"kind": "group", "seeds": [0], "runs": ["seed-0"]}))
    if target == "file":
        bad = tmp_path / "weights.pt"
        shutil.copy(run / "checkpoints" / "last.pt", bad)
    else:
        bad = run / "checkpoints" / target
        if target == "last.pt":
            (run / "checkpoints" / "best.pt").unlink()
    make_malicious(bad, marker)
    weights = {"model": {"name": "mlp", "hidden": [32], "weights": str(bad if target == "file" else run)}}
    args = {
        "resume": ["train", "--resume", run],
        "resume-group": ["train", "--resume", run.parent],
        "validate": ["validate", tiny_config("w", **weights)],
        "train": ["train", tiny_config("w", **weights), "--run-dir", tmp_path / "new"],
        "range-test": ["range-test", tiny_config("w", **weights), "--run-dir", tmp_path / "new"],
    }[command]
    assert cli(*args, *([] if command == "validate" else ["-q"])) == 2
    err = one_error_line(capsys)
    assert f"refused to load {bad}" in err and "posix.system" in err and "weights_only=True" in err, err
    assert not marker.exists()
    assert not (tmp_path / "new").exists()


def test_a_sweep_resuming_a_point_loads_no_code(cli, tiny_config, tmp_path):
    marker = tmp_path / "MARKER"
    sweep = tmp_path / "sweep"
    cfg = tiny_config(train={"epochs": 1, "eval_every": 5})
    assert cli("sweep", cfg, "-g", "optimizer.momentum=0.9", "--run-dir", sweep, "-q") == 0
    point = sweep / "points" / "momentum-0.9"
    set_status(point, "interrupted")
    make_malicious(point / "checkpoints" / "last.pt", marker)
    assert cli("sweep", cfg, "-g", "optimizer.momentum=0.9", "--run-dir", sweep, "-q") == 1  # the point failed
    assert not marker.exists()
    log = (sweep / "logs" / "momentum-0.9.log").read_text()
    assert f"refused to load {point.resolve() / 'checkpoints' / 'last.pt'}" in log, log


def test_new_checkpoints_hold_only_tensors_and_plain_data(cli, tiny_config, tmp_path):
    """Every policy and optimizer (and the RNG states): nothing torch's weights_only loader
    would refuse, so a checkpoint of today's clrctl needs no allowed globals at all."""
    policies = [{"name": "triangular2", "bounds": [0.02, 0.1], "stepsize": 7},
                {"name": "exp_range", "bounds": [0.02, 0.1], "stepsize": 7, "gamma": 0.99},
                {"name": "one_cycle", "bounds": [0.01, 0.1]}, {"name": "cosine", "bounds": [0.01, 0.1]},
                {"name": "step", "lr": 0.05, "milestones": [5, 10]}, {"name": "fixed", "lr": 0.05}]
    optimizers = [{"name": "sgd", "momentum": 0.9}, {"name": "adam"}, {"name": "adamw"}, {"name": "sgd"}]
    for i, (policy, optimizer) in enumerate(zip(policies, optimizers * 2)):
        run = tmp_path / f"run{i}"
        cfg = tiny_config(f"p{i}", policy=policy, optimizer=optimizer, train={"epochs": 1, "eval_every": 5})
        assert cli("train", cfg, "--run-dir", run, "-q") == 0
        for name in ("last.pt", "best.pt"):
            assert torch.serialization.get_unsafe_globals_in_checkpoint(run / "checkpoints" / name) == [], name
            torch.load(run / "checkpoints" / name, weights_only=True)


def test_rng_states_come_back_exactly_through_a_weights_only_load(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    random.random(), np.random.normal(), torch.rand(3)  # (numpy then holds a cached gaussian)
    torch.save({"rng": checkpoint.rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.normal(size=3).tolist(), torch.rand(3).tolist())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    checkpoint.restore_rng(checkpoint.load(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.normal(size=3).tolist(), torch.rand(3).tolist()) == expected


def test_a_checkpoint_of_the_earlier_layout_still_resumes_exactly(cli, resumable):
    """Checkpoints written before the RNG states were plain lists hold numpy's own state (an
    ndarray): they load as data too (numpy arrays are allowed), and resume to the same bytes."""
    new, old = resumable("new"), resumable("old")
    saved = torch.load(old / "checkpoints" / "last.pt", weights_only=True)
    name, keys, *rest = saved["rng"]["numpy"]
    saved["rng"]["numpy"] = (name, np.array(keys, dtype=np.uint32), *rest)  # as np.random.get_state() gives
    torch.save(saved, old / "checkpoints" / "last.pt")
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(old / "checkpoints" / "last.pt")
    assert cli("train", "--resume", new, "-q") == 0
    assert cli("train", "--resume", old, "-q") == 0
    assert (old / "metrics.csv").read_bytes() == (new / "metrics.csv").read_bytes()


# -- part 7: corrupt run files -------------------------------------------------------------


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _other_keys(path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, path)


def _unknown_counter(path: Path) -> None:
    saved = torch.load(path, weights_only=True)
    saved["state"]["steps_left"] = 3
    torch.save(saved, path)


@pytest.mark.parametrize("file, damage, says", [
    ("checkpoints/last.pt", lambda p: p.write_bytes(b""), "the file is empty"),
    ("checkpoints/last.pt", _cut, "truncated, corrupt or not a torch file"),
    ("checkpoints/last.pt", lambda p: p.write_bytes(os.urandom(3000)), "truncated, corrupt or not a torch file"),
    ("checkpoints/last.pt", _other_keys, "not a clrctl checkpoint (no model, optimizer"),
    ("checkpoints/last.pt", _unknown_counter, "not a clrctl checkpoint (unknown counters steps_left)"),
    ("run.json", lambda p: p.write_text("[]"), "unreadable (a JSON list, not an object)"),
    ("config.yaml", lambda p: p.write_text(p.read_text().replace("- 32", "- 16")),
     "checkpoints/last.pt: does not fit the model of"),
    ("metrics.csv", lambda p: p.write_text(""), "without a header, but the checkpoint has 22 row(s)"),
    ("metrics.csv", lambda p: p.unlink(), "missing, but the checkpoint has 22 row(s)"),
    ("epochs.csv", lambda p: p.write_text(p.read_text().splitlines()[0] + "\n"),
     "no rows; the checkpoint is at epoch 1"),
    ("metrics.csv", lambda p: p.write_text("\n".join(p.read_text().splitlines()[:-6]) + "\n"),
     "rows end at step 16; the checkpoint is at step 21"),
    ("metrics.csv", lambda p: p.write_text(p.read_text().replace("\n3,1,", "\n3,")),
     "line 5 has 6 values, not 7"),
])
def test_a_corrupt_run_file_is_one_line_naming_it_and_changes_nothing(cli, resumable, capsys, file, damage, says):
    run = resumable()
    with open(run / "metrics.csv", "a") as handle:  # a row logged after the checkpoint: kept too
        handle.write("22,2,0.05,0.9,0.3,,\n")
    damage(run / file)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert cli("train", "--resume", run, "-q") == 2
    err = one_error_line(capsys)
    named = run / ("checkpoints/last.pt" if file == "config.yaml" else file)
    assert f"{named}" in err and says in err, err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert json.loads((run / "run.json").read_text()) == [] or \
        json.loads((run / "run.json").read_text())["status"] == "interrupted"


def test_a_last_row_cut_short_is_dropped_said_and_the_run_resumes_exactly(cli, resumable, capsys):
    clean, cut = resumable("clean"), resumable("cut")
    with open(cut / "metrics.csv", "a") as handle:
        handle.write("2")  # the start of row 22 ("22,2,0.07…"): a kill -9 or a full disk mid-write
    with open(cut / "epochs.csv", "a") as handle:
        handle.write("2,44,0.3")
    assert cli("train", "--resume", clean, "-q") == 0
    capsys.readouterr()
    assert cli("train", "--resume", cut, "-q") == 0
    err = capsys.readouterr().err.strip()
    assert err == (f"warning: repaired before resuming {cut}: metrics.csv: dropped a last line cut short; "
                   "epochs.csv: dropped a last line cut short"), err
    assert (cut / "metrics.csv").read_bytes() == (clean / "metrics.csv").read_bytes()


def test_empty_logs_of_a_run_stopped_before_its_first_step_get_their_header(cli, tiny_config, tmp_path, capsys):
    """A full disk before the header was written: the run resumes with headers, and says so."""
    run = tmp_path / "run"
    assert cli("train", tiny_config(), "--run-dir", tmp_path / "ref", "-q") == 0
    assert cli("train", tiny_config(), "--run-dir", run, "-q") == 0
    shutil.rmtree(run / "checkpoints")
    (run / "metrics.csv").write_text("")
    (run / "epochs.csv").write_text("epoch,st")  # cut inside its header
    (run / "summary.json").unlink()
    set_status(run, "interrupted")
    capsys.readouterr()
    assert cli("train", "--resume", run, "-q") == 0
    err = capsys.readouterr().err.strip()
    assert err == (f"warning: repaired before resuming {run}: metrics.csv: header written; "
                   "epochs.csv: dropped a last line cut short; epochs.csv: header written"), err
    assert (run / "metrics.csv").read_bytes() == (tmp_path / "ref" / "metrics.csv").read_bytes()


@pytest.mark.plots  # (it reads the plots: conftest skips them elsewhere)
def test_a_run_with_no_checkpoint_and_no_logs_yet_resumes_silently(cli, tiny_config, tmp_path, capsys):
    """What an interrupt right after start-up leaves: run.json and config.yaml only."""
    run = tmp_path / "run"
    assert cli("train", tiny_config(), "--run-dir", run, "-q") == 0
    for name in ("checkpoints", "plots"):
        shutil.rmtree(run / name)
    for name in ("metrics.csv", "epochs.csv", "summary.json"):
        (run / name).unlink()
    set_status(run, "interrupted")
    capsys.readouterr()
    assert cli("train", "--resume", run, "-q") == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("content, says", [
    (b"", "the file is empty"),
    ("cut", "truncated, corrupt or not a torch file"),
    (b"\x80\x04garbage", "truncated, corrupt or not a torch file"),
    ("other-model", "does not fit this model"),
    ("not-tensors", "holds no state_dict"),
])
def test_corrupt_weights_are_one_line_naming_the_file(cli, tiny_config, resumable, tmp_path, capsys,
                                                      content, says):
    path = tmp_path / "w.pt"
    if content == "cut":
        shutil.copy(resumable() / "checkpoints" / "best.pt", path)
        _cut(path)
    elif content == "other-model":
        torch.save({"0.weight": torch.zeros(3, 3)}, path)
    elif content == "not-tensors":
        torch.save({"a": [1, 2]}, path)
    else:
        path.write_bytes(content)
    assert cli("validate", tiny_config("w", model={"name": "mlp", "hidden": [32], "weights": str(path)})) == 2
    err = one_error_line(capsys)
    assert err.startswith("error: model.weights:") and str(path) in err and says in err, err
