"""What the user reads: literal messages, --debug anywhere, paths that copy whole, help text,
preview / validate wording, user-model errors, corrupt images, the loss plot's scale (issue 12)."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import yaml

from clrctl.errors import ConfigError
from conftest import CONFIGS, REPO


# ---------------------------------------------------------------------------------------
# Messages with square brackets (rich markup) and config error wording


@pytest.mark.parametrize("override, expected", [
    ("policy.bounds=0.1", "policy.bounds: expected [base_lr, max_lr] or {from: <range-test run>} (got 0.1)"),
    ("policy.momentum=[0.95,0.85]",
     "policy.momentum: expected [low, high] with 0 <= low <= high < 1 (got [0.95, 0.85])"),
    ("policy.bounds=[0.1]", "policy.bounds: expected [base_lr, max_lr] or {from: <range-test run>} (got [0.1])"),
    ("policy.bounds=[0.1,abc]", "policy.bounds: expected [base_lr, max_lr] or {from: <range-test run>}"),
    ("optimizer.betas=[0.9]", "optimizer.betas: expected 2 values (got [0.9])"),
])  # fmt: skip
def test_config_errors_keep_their_bracketed_text(cli, capsys, override, expected):
    assert cli("validate", CONFIGS / "digits-one_cycle.yaml", override) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


def test_unexpected_errors_keep_brackets_too(cli, capsys, monkeypatch):
    import clrctl.config.schema

    def broken(*args, **kwargs):
        raise RuntimeError("list [a, b] lost")

    monkeypatch.setattr(clrctl.config.schema, "read_yaml", broken)
    assert cli("validate", CONFIGS / "digits-one_cycle.yaml") == 1
    assert "RuntimeError: list [a, b] lost" in capsys.readouterr().err


def test_empty_config_file_gets_a_warning(cli, tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert cli("preview", empty, "--rows", "2") == 0
    err = capsys.readouterr().err
    assert f"warning: {empty}: the config file is empty; every setting takes its default" in err


# ---------------------------------------------------------------------------------------
# --debug after the command; help text


@pytest.mark.parametrize("where", ["first", "last", "middle"])
def test_debug_works_before_and_after_the_command(cli, where):
    args = ["validate", str(CONFIGS / "digits-one_cycle.yaml"), "policy.bounds=[1, 0.1]"]
    args = {"first": ["--debug", *args], "last": [*args, "--debug"], "middle": [args[0], "--debug", *args[1:]]}[where]
    with pytest.raises(ConfigError, match="base_lr must be < max_lr"):
        cli(*args)


def test_without_debug_the_error_is_one_line(cli, capsys):
    assert cli("validate", CONFIGS / "digits-one_cycle.yaml", "policy.bounds=[1, 0.1]") == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["train"], ["range-test"], ["preview"], ["validate"], ["compare"]])
def test_help_shows_no_type_after_value_less_flags(cli, capsys, command):
    assert cli(*command, "--help") == 0
    out = capsys.readouterr().out
    assert "--help" in out and "<bool>" not in out
    if command == ["train"]:
        assert "--quiet" in out and "<path>" in out  # options with values keep their type


def test_train_help_documents_the_user_model_contract(cli, capsys):
    assert cli("train", "--help") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "module:callable" in out and "input_shape" in out and "(1, 8, 8)" in out
    assert "logits (batch, num_classes)" in out


# ---------------------------------------------------------------------------------------
# User models that raise: file and line in the message and the --debug traceback


def write_module(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(body)
    return path


def test_user_model_error_names_the_users_file_and_line(cli, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_module(tmp_path, "clrctl_ux_raises", "import torch\n\n\ndef build(input_shape, num_classes):\n"
                        "    raise ValueError('no [such] layer')\n")
    args = ["validate", CONFIGS / "digits-one_cycle.yaml", "model.name=clrctl_ux_raises:build"]
    assert cli(*args) == 2
    err = capsys.readouterr().err
    assert f"raised ValueError: no [such] layer (at {path}:5)" in err
    with pytest.raises(ConfigError) as info:
        cli(*args, "--debug")
    shown = "".join(traceback.format_exception(info.value))
    assert f'File "{path}", line 5, in build' in shown


def test_user_module_failing_on_import_names_its_line(cli, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_module(tmp_path, "clrctl_ux_import_fails", "x = 1\nraise RuntimeError('broken at import')\n")
    assert cli("validate", CONFIGS / "digits-one_cycle.yaml", "model.name=clrctl_ux_import_fails:build") == 2
    err = capsys.readouterr().err
    assert f"cannot import module 'clrctl_ux_import_fails': RuntimeError: broken at import (at {path}:2)" in err


def test_user_module_with_a_syntax_error_names_its_line(cli, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_module(tmp_path, "clrctl_ux_syntax", "import torch\ndef build(:\n    pass\n")
    assert cli("validate", CONFIGS / "digits-one_cycle.yaml", "model.name=clrctl_ux_syntax:build") == 2
    err = capsys.readouterr().err
    assert f"SyntaxError: invalid syntax (at {path}:2)" in err


# ---------------------------------------------------------------------------------------
# Paths on lines of their own


def test_train_prints_the_run_path_whole_at_a_narrow_terminal(tiny_config, tmp_path):
    run = tmp_path / "a-run-directory-whose-name-is-longer-than-forty-columns"
    env = {**os.environ, "COLUMNS": "40", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-m", "clrctl", "train", str(tiny_config()), "train.epochs=1",
                           "--run-dir", str(run), "-q"], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert str(run) in lines  # the whole path, alone on its line
    assert "run:" in lines


def test_range_test_prints_paths_and_next_command_whole(cli, tmp_path, capsys):
    run = tmp_path / ("range-test-" + "x" * 90)  # longer than the 80 columns of a captured console
    assert cli("range-test", CONFIGS / "digits-range-test.yaml", "range_test.steps=40", "range_test.eval_every=5",
               "--run-dir", run, "-q") == 0
    lines = capsys.readouterr().out.splitlines()
    assert str(run) in lines
    assert f"clrctl train {run / 'suggested.yaml'}" in lines
    assert re.search(r"^\d+ steps, ", "\n".join(lines), re.M)


# ---------------------------------------------------------------------------------------
# suggested.yaml keeps the user's config


def test_suggested_yaml_is_the_users_config_plus_bounds(cli, tmp_path):
    from clrctl.config.schema import load_config

    run = tmp_path / "rt"
    assert cli("range-test", CONFIGS / "digits-range-test.yaml", "range_test.steps=40", "range_test.eval_every=5",
               "device=cpu", "--run-dir", run, "-q") == 0
    suggested = yaml.safe_load((run / "suggested.yaml").read_text())
    written = yaml.safe_load((CONFIGS / "digits-range-test.yaml").read_text())
    assert suggested["device"] == "cpu" and suggested["range_test"]["steps"] == 40  # overrides kept
    assert "betas" not in suggested["optimizer"] and "log_every" not in suggested["train"]  # no defaults
    assert set(suggested["policy"]) == {"name", "stepsize", "bounds"}  # fixed's lr dropped
    assert suggested["name"] == "digits-triangular2" and suggested["dataset"] == written["dataset"]
    config = load_config(run / "suggested.yaml")
    assert config.policy.name == "triangular2" and config.policy.base_lr < config.policy.max_lr


# ---------------------------------------------------------------------------------------
# preview and validate


def preview_rows(out: str) -> dict[int, tuple[str, str]]:
    """step -> (epoch, lr) from preview's table."""
    rows = {}
    for line in out.splitlines():
        cells = line.split("\t")  # (tab-separated when not a terminal)
        if len(cells) == 4 and cells[0].isdigit():
            rows[int(cells[0])] = (cells[1], cells[2])
    return rows


@pytest.mark.parametrize("name, header", [
    ("fixed", "fixed: 1032 steps (43 per epoch)\n"),
    ("one_cycle", "one_cycle: 344 steps (43 per epoch)\n"),
    ("triangular2", "triangular2: 344 steps (43 per epoch, stepsize 86)\n"),
    ("sgdr", "stepsize"),
])  # fmt: skip
def test_preview_shows_stepsize_only_where_it_applies(cli, capsys, name, header):
    assert cli("preview", CONFIGS / f"digits-{name}.yaml", "--rows", "2") == 0
    assert header in capsys.readouterr().out


def test_preview_epochs_agree_with_metrics_csv(cli, tiny_config, tmp_path, capsys):
    config = tiny_config(train={"epochs": 2})
    assert cli("train", config, "--run-dir", tmp_path / "run", "-q") == 0
    with open(tmp_path / "run" / "metrics.csv", newline="") as file:
        logged = {int(r["step"]): r["epoch"] for r in csv.DictReader(file)}
    capsys.readouterr()
    assert cli("preview", config, "--rows", str(len(logged))) == 0
    shown = preview_rows(capsys.readouterr().out)
    assert len(shown) == len(logged) and {s: e for s, (e, _) in shown.items()} == logged


def test_preview_and_validate_of_a_range_test_config_describe_the_sweep(cli, capsys):
    config = CONFIGS / "digits-range-test.yaml"
    assert cli("preview", config, "--rows", "3") == 0
    out = capsys.readouterr().out
    assert out.startswith("range test: linear 0.0001 -> 0.3 over 344 steps (43 per epoch)")
    assert preview_rows(out)[0] == ("1", "0.0001") and preview_rows(out)[343] == ("8", "0.3")
    assert cli("preview", config, "--rows", "3", "--policy") == 0
    assert capsys.readouterr().out.startswith(  # what suggested.yaml trains, then the policy as written
        "suggested.yaml trains triangular2 between the bounds the range test finds, stepsize 86 "
        "(below: fixed as written)\nfixed: 344 steps (43 per epoch)")
    assert cli("validate", config) == 0
    assert "range test: linear 0.0001 -> 0.3 over 344 steps (43 per epoch)" in capsys.readouterr().out


def test_preview_needs_no_data_for_known_data_sets(cli, tmp_path, capsys):
    assert cli("preview", CONFIGS / "cifar10-triangular2.yaml", f"dataset.root={tmp_path}", "--rows", "2") == 0
    assert "triangular2: 25000 steps (500 per epoch, stepsize 2000)" in capsys.readouterr().out
    assert cli("preview", CONFIGS / "mnist-lenet-one_cycle.yaml", f"dataset.root={tmp_path}", "--rows", "2") == 0
    assert "one_cycle: 5628 steps (469 per epoch)" in capsys.readouterr().out


def test_preview_of_missing_image_folder_mentions_steps_per_epoch(cli, tmp_path, capsys):
    args = ["preview", CONFIGS / "digits-triangular2.yaml", "dataset.name=imagefolder",
            f"dataset.root={tmp_path / 'x'}"]
    assert cli(*args) == 2
    err = capsys.readouterr().err
    assert "dataset.root" in err and "--steps-per-epoch" in err
    assert cli(*args, "--steps-per-epoch", "10", "--rows", "2") == 0
    # All in steps: no data and no --steps-per-epoch needed.
    assert cli(*args, "train.epochs=null", "train.steps=50", "policy.stepsize=10", "--rows", "2") == 0
    assert "triangular2: 50 steps (stepsize 10)" in capsys.readouterr().out


def test_preview_plot_says_where_it_wrote(cli, tmp_path, capsys):
    plot = tmp_path / "schedule.png"
    assert cli("preview", CONFIGS / "digits-triangular2.yaml", "--plot", plot, "--rows", "2") == 0
    assert f"wrote {plot}" in capsys.readouterr().err and plot.is_file()


def test_plural_of_evaluations():
    from clrctl.rangetest.suggest import accuracy_analysis
    from clrctl.text import count

    assert accuracy_analysis(np.array([0.1]), np.array([0.5]), 100)["reason"].startswith("only 1 accuracy evaluation ")
    assert accuracy_analysis(np.array([0.1, 0.2]), np.array([0.5, 0.6]), 100)["reason"].startswith(
        "only 2 accuracy evaluations ")
    assert (count(1, "step"), count(0, "step"), count(2, "step")) == ("1 step", "0 steps", "2 steps")


# ---------------------------------------------------------------------------------------
# Corrupt images


def write_folder(root: Path, corrupt: str) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    data = (root / corrupt).read_bytes()
    (root / corrupt).write_bytes(data[: len(data) // 2])  # truncated


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_is_one_line_naming_the_file(tmp_path, workers):
    import torch

    from clrctl.config.schema import DatasetConfig
    from clrctl.data.datasets import build_data
    from clrctl.errors import DataError

    write_folder(tmp_path / "images", "b/3.png")
    cfg = DatasetConfig(name="imagefolder", root=str(tmp_path / "images"), image_size=8, batch_size=4,
                        num_workers=workers, val_fraction=0.5)
    bundle = build_data(cfg, 0, torch.device("cpu"))
    with pytest.raises(DataError) as info:
        for source in (bundle.train, bundle.val):
            list(source.batches(0))
    assert str(info.value) == (f"dataset.root: cannot read image {tmp_path / 'images' / 'b' / '3.png'}: "
                               "image file is truncated")


def test_corrupt_image_met_by_the_probe_batch_is_exit_2_and_no_run_dir(cli, tiny_config, tmp_path, capsys):
    write_folder(tmp_path / "images", "a/2.png")
    config = tiny_config(dataset={"name": "imagefolder", "root": str(tmp_path / "images"), "image_size": 8,
                                  "batch_size": 4, "num_workers": 0, "val_fraction": 0.5},
                         policy={"name": "triangular2", "bounds": [0.02, 0.1], "stepsize": 1})  # < the run: no warning
    assert cli("train", config, "--run-dir", tmp_path / "run", "-q") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read image" in err and "2.png" in err
    assert not (tmp_path / "run").exists()


def test_corrupt_image_met_in_training_fails_the_run(cli, tiny_config, tmp_path, capsys, monkeypatch):
    import clrctl.engine.setup

    monkeypatch.setattr(clrctl.engine.setup, "probe_batch", lambda setup: None)  # as if the probe missed the file
    write_folder(tmp_path / "images", "a/2.png")
    config = tiny_config(dataset={"name": "imagefolder", "root": str(tmp_path / "images"), "image_size": 8,
                                  "batch_size": 4, "num_workers": 0, "val_fraction": 0.5},
                         policy={"name": "triangular2", "bounds": [0.02, 0.1], "stepsize": 1})  # < the run: no warning
    assert cli("train", config, "--run-dir", tmp_path / "run", "-q") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read image" in err and "2.png" in err
    assert yaml.safe_load((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


# ---------------------------------------------------------------------------------------
# The loss plot's average and scale


def test_moving_average_weights_steps_by_batch_size():
    from clrctl.series import batch_sizes, moving_average

    sizes = batch_sizes(np.arange(90), 43, 32, 1347)  # digits: 43 steps per epoch, the last of 3 samples
    assert sizes[40:44].tolist() == [32, 32, 3, 32] and sizes.sum() == 2 * 1347 + 4 * 32
    smoothed = moving_average([1.0, 1.0, 0.0, 1.0], 3, [32, 32, 3, 32])
    assert smoothed[2] == pytest.approx(64 / 67)  # the 3-sample batch's 0 barely moves it
    assert moving_average([1.0, 1.0, 0.0, 1.0], 3)[2] == pytest.approx(2 / 3)  # unweighted, as before


def test_loss_axis_limits_ignore_a_few_near_zero_losses():
    from clrctl.series import robust_limits

    curve = 2.0 * np.exp(-np.linspace(0.0, 3.0, 1000))  # 2 -> 0.1
    curve[[100, 400, 700, 999]] = 1e-7
    low, high = robust_limits(curve, log=True)
    assert 0.05 < low < 0.1 and 2.0 < high < 3.0
    assert robust_limits([1.0, 1.0], log=False) == (0.9, 1.1)
    assert robust_limits([np.nan, np.inf], log=True) is None


# ---------------------------------------------------------------------------------------
# dataset.drop_last (training batches only)


@pytest.mark.parametrize("name, drop_last", [("digits", False), ("digits", True), ("synthetic", True)])
def test_known_steps_per_epoch_matches_the_data(name, drop_last):
    import torch

    from clrctl.config.schema import DatasetConfig
    from clrctl.data.datasets import build_data, known_steps_per_epoch

    cfg = DatasetConfig(name=name, batch_size=32, drop_last=drop_last, num_samples=1000)
    bundle = build_data(cfg, 0, torch.device("cpu"))
    assert known_steps_per_epoch(cfg) == len(bundle.train)
    sizes = [len(y) for _, y in bundle.train.batches(0)]
    assert len(sizes) == len(bundle.train) and (set(sizes) == {32}) == drop_last
    assert sum(len(y) for _, y in bundle.val.batches(0)) == bundle.val.num_samples  # validation keeps all


def test_drop_last_resumes_mid_epoch_exactly_on_both_sources(tmp_path):
    import torch

    from clrctl.config.schema import DatasetConfig
    from clrctl.data.datasets import build_data

    write_folder(tmp_path / "images", "a/0.png")
    (tmp_path / "images" / "a" / "0.png").unlink()  # 11 readable images
    for cfg in (DatasetConfig(name="digits", batch_size=32, drop_last=True),
                DatasetConfig(name="imagefolder", root=str(tmp_path / "images"), image_size=8, batch_size=3,
                              num_workers=0, val_fraction=0.25, drop_last=True, augment=True)):
        train = build_data(cfg, 3, torch.device("cpu")).train
        full = list(train.batches(1))
        assert len(full) == len(train) and all(len(y) == cfg.batch_size for _, y in full)
        rest = list(train.batches(1, start=len(full) - 1))
        assert len(rest) == 1 and torch.equal(rest[0][0], full[-1][0]) and torch.equal(rest[0][1], full[-1][1])


def test_drop_last_is_refused_when_no_batch_is_left(cli, capsys):
    assert cli("validate", CONFIGS / "digits-fixed.yaml", "dataset.drop_last=true", "dataset.batch_size=5000") == 2
    assert "dataset.drop_last: batch_size 5000 is larger than the 1347 training samples" in capsys.readouterr().err


def test_preview_of_suggested_yaml_shows_the_policy_and_range_test_flag_the_sweep(cli, tiny_config, capsys):
    config = tiny_config(name="tiny-range-test")
    assert cli("preview", config, "--rows", "2", "range_test.steps=30") == 0
    assert capsys.readouterr().out.startswith("range test: linear 0.0001 -> 1 over 30 steps (22 per epoch)")
    renamed = tiny_config(name="tiny-triangular2", range_test={"steps": 30})  # like suggested.yaml
    assert cli("preview", renamed, "--rows", "2") == 0
    assert capsys.readouterr().out.startswith("triangular2: 44 steps (22 per epoch, stepsize 7)")
    assert cli("preview", renamed, "--rows", "2", "--range-test") == 0
    assert capsys.readouterr().out.startswith("range test: linear 0.0001 -> 1 over 30 steps")
