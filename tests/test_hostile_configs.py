"""Hostile and impossible configs (issue 17 parts 3, 5, 8; issue 16's config rough edges): each
is refused in validation with one line and exit 2, before any directory exists; what cannot
take effect warns once."""

from __future__ import annotations

import sys
import warnings

import pytest
import yaml

from clrctl.config import schema as config_module
from clrctl.config.schema import apply_override, load_config, read_yaml
from clrctl.errors import ClrctlWarning, ConfigError, InputError
from clrctl.sweep.grid import parse_grid_option, point_names

from conftest import CONFIGS


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def billion_laughs() -> str:
    """369 bytes that expand to 9**9 (387 million) strings under model.args."""
    lines = ["name: laughs", "model:", "  name: mlp", "  args:", "    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"    {name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# -- part 3: bounded YAML -------------------------------------------------------------------


def test_billion_laughs_is_refused_when_read(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(billion_laughs())
    with pytest.raises(ConfigError, match=r"laughs.yaml: invalid YAML at line \d+: expands to more than 100,000"):
        read_yaml(path)


def test_billion_laughs_validate_and_train_are_one_line_exit_2(cli, tmp_path, capsys):
    path = tmp_path / "laughs.yaml"
    path.write_text(billion_laughs())
    assert cli("validate", path) == 2
    assert "expands to more than" in one_line_error(capsys)
    assert cli("train", path, "--run-dir", tmp_path / "run", "-q") == 2
    assert "expands to more than" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_a_self_referencing_alias_is_refused(tmp_path):
    path = tmp_path / "cycle.yaml"
    path.write_text("model:\n  args:\n    x: &x {y: *x}\n")
    with pytest.raises(ConfigError, match="nested deeper than"):
        read_yaml(path)


def test_deep_nesting_is_refused_in_files_overrides_and_grids(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text(f"model:\n  args:\n    x: {nested(500)}\n")
    with pytest.raises(ConfigError, match=r"deep.yaml: invalid YAML at line 3: nested deeper than 64 levels"):
        read_yaml(path)
    with pytest.raises(ConfigError, match="cannot parse the value as YAML \\(nested deeper than 64 levels\\)"):
        apply_override({}, f"model.args.x={nested(500)}")
    with pytest.raises(InputError, match="nested deeper than 64 levels"):
        parse_grid_option(f"model.args.x={nested(500)},1")
    assert read_yaml_text(tmp_path, f"model:\n  args:\n    x: {nested(20)}\n")["model"]["args"]["x"]


def read_yaml_text(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return read_yaml(path)


def test_duplicate_keys_are_refused_naming_key_and_line(tmp_path, cli, capsys):
    text = "policy:\n  name: fixed\n  lr: 0.1\ntrain:\n  epochs: 1\npolicy:\n  name: triangular\n"
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    assert cli("validate", path) == 2
    assert "dup.yaml: invalid YAML at line 6: duplicate key 'policy'" in one_line_error(capsys)
    # a key that overrides a merged one (<<: *base) is not a duplicate
    merged = read_yaml_text(tmp_path, "base: &b {lr: 0.1, name: fixed}\npolicy:\n  <<: *b\n  lr: 0.2\n")
    assert merged["policy"] == {"lr": 0.2, "name": "fixed"}


def test_a_long_bad_value_is_echoed_cut_short(tmp_path, cli, capsys):
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "mlp", "hidden": [-1] * 250}}))
    assert cli("validate", path) == 2
    err = one_line_error(capsys)
    assert err.startswith("error: model.hidden: hidden sizes must be positive (got [-1, -1") and len(err) < 500, err
    assert "…" in err


# -- part 8: values that validate used to accept and train then failed on ---------------------

BAD_VALUES = [
    ("name=" + "a" * 300, "name: at most 100 characters"),
    ("dataset.batch_size=1000000000000000000000000000000", "dataset.batch_size: Input should be less than or equal to 1048576"),
    ("policy.stepsize=" + "9" * 400, "policy.stepsize: at most 1e+09 steps"),
    ("policy.stepsize=2000000 epochs", "policy.stepsize: at most 1e+06 epochs"),
    ("policy.lr=1e308", "policy.lr: Input should be less than or equal to 10000000000"),
    ("policy.bounds=[1e-300, 1e308]", "policy.bounds: learning rates must lie in [1e-12, 1e+10]"),
    ("policy.lr=.inf", "policy.lr:"),
    ("optimizer.weight_decay=.inf", "optimizer.weight_decay:"),
    ("policy.gamma=.inf", "policy.gamma: Input should be a finite number"),
    ("range_test.end_lr=.inf", "range_test.end_lr:"),
    (f"seed={2**64}", "seed: Input should be less than or equal to 4294967295"),
    ("seed=-1", "seed: Input should be greater than or equal to 0"),
    ("model.hidden=[1000000000]", "model.hidden: hidden sizes must be at most 65536"),
    ("train.eval_every=true", "train.eval_every: expected a number (got true)"),
    ("dataset.batch_size=false", "dataset.batch_size: expected a number (got false)"),
    ("policy.bounds=[true, 2]", "policy.bounds: expected a number (got true)"),
    ("train.target={val_acc: .nan}", "train.target.val_acc: Input should be a finite number"),
    ("train.target={val_acc: 1.5}", "train.target: val_acc is a fraction: expected a threshold in [0, 1]"),
    ("optimizer.betas=[2, 0.9]", "optimizer.betas.0: Input should be less than 1"),
    ("policy.name=exp_range policy.gamma=1.5", "policy.gamma: exp_range shrinks the cycles"),
    ("model.hidden=[65536, 65536]", "model.hidden: [65536, 65536] makes an mlp of 4,299,948,042 parameters"),
    ("dataset.val_fraction=0.999", "dataset.val_fraction: 0.999 leaves 1 training samples for 10 classes"),
    ("dataset.name=builtins:exit", "dataset.name: 'builtins:exit' raised SystemExit (it called exit())"),
    ("model.name=sys:exit", "model.name: 'sys:exit' raised SystemExit (it called exit())"),
]


@pytest.mark.parametrize("overrides, message", BAD_VALUES, ids=[b[0][:40] for b in BAD_VALUES])
def test_unrunnable_values_are_refused_in_validation(cli, tiny_config, tmp_path, capsys, overrides, message):
    cfg = tiny_config()
    items = overrides.split(" ") if overrides.startswith("policy.name=") else [overrides]
    assert cli("validate", cfg, *items) == 2
    assert message in one_line_error(capsys)
    assert cli("train", cfg, *items, "--run-dir", tmp_path / "run", "-q") == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("inside", [False, True])
def test_a_run_dir_that_is_a_file_is_refused_before_any_work(cli, tiny_config, tmp_path, capsys, inside):
    file = tmp_path / "file"
    file.write_text("not a directory\n")
    run_dir = file / "run" if inside else file
    for command in (["train", tiny_config()], ["range-test", tiny_config()], ["sweep", tiny_config(), "-g", "seed=1,2"]):
        assert cli(*command, "--run-dir", run_dir, "-q") == 2
        err = one_line_error(capsys)
        assert f"--run-dir {run_dir}: " in err and "which is a file" in err if inside else "is a file, not a directory" in err
    assert file.read_text() == "not a directory\n"


# -- part 5: sweep paths stay inside the sweep directory -----------------------------------------


def test_grid_and_include_keys_are_sanitised_like_values():
    names = point_names([{"model.args./abs/path/escape": 1}, {"model.args.../../up": 2}, {"x": {"/etc/k": 3}}])
    assert names == ["abs-path-escape-1", "up-2", "x-etc-k-3"]
    assert all("/" not in n for n in names)
    from clrctl.sweep.grid import check_component

    for bad in ("../x", "/abs", "..", "a/b", ""):
        with pytest.raises(InputError, match="not a plain file name"):
            check_component(bad)


def test_a_sweep_key_with_a_path_writes_inside_the_sweep(cli, tiny_config, tmp_path):
    outside = tmp_path / "outside"
    cfg = tiny_config(train={"steps": 3, "epochs": None, "eval_every": 3})
    sweep = tmp_path / "S"
    assert cli("sweep", cfg, "-g", f"model.args.{outside}/escape=1,2", "--run-dir", sweep, "-q") == 0
    assert not outside.exists()
    written = sorted(p.relative_to(sweep).as_posix() for p in (sweep / "configs").iterdir())
    assert written == [f"configs/{outside.as_posix().strip('/').replace('/', '-')}-escape-{v}.yaml" for v in (1, 2)]


def test_sweep_include_keys_stay_inside_too(cli, tiny_config, tmp_path):
    outside = tmp_path / "elsewhere"
    cfg = tiny_config(train={"steps": 3, "epochs": None, "eval_every": 3},
                      sweep={"include": [{f"model.args.{outside}/x": 1}]})
    assert cli("sweep", cfg, "--run-dir", tmp_path / "S", "-q") == 0
    assert not outside.exists() and len(list((tmp_path / "S" / "configs").iterdir())) == 1


# -- issue 16: messages, warnings, paths, hints --------------------------------------------------


@pytest.mark.parametrize("override", ["policy=3", "dataset=3", "model=[1]", "optimizer=x", "train=3", "range_test=3",
                                      "optimizer.groups=[3]", "sweep=3", "policy.bounds={x: 1}"])
def test_messages_name_no_schema_class(cli, tiny_config, capsys, override):
    assert cli("validate", tiny_config(), override) == 2
    err = one_line_error(capsys)
    assert "Config" not in err and "BoundsFrom" not in err and "instance of" not in err, err


def test_ignored_policy_keys_warn_once(cli, tiny_config, capsys):
    cfg = tiny_config()  # triangular2 with stepsize 7
    assert cli("validate", cfg, "policy.name=one_cycle", "policy.gamma=0.5") == 0
    err = capsys.readouterr().err
    assert err.count("warning: policy.stepsize: ignored by policy 'one_cycle'") == 1, err
    assert err.count("warning: policy.gamma: ignored by policy 'one_cycle'") == 1, err


def test_a_stepsize_longer_than_the_run_warns_once(cli, tiny_config, capsys):
    assert cli("validate", tiny_config(), "policy.stepsize=1000") == 0
    err = capsys.readouterr().err
    assert err.count("warning: policy.stepsize: 1000 steps is not shorter than the run (44 steps)") == 1, err


def test_bundled_configs_warn_about_nothing():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in sorted(CONFIGS.glob("*.yaml")):
            load_config(path)
    assert not [w for w in caught if issubclass(w.category, ClrctlWarning)], [str(w.message) for w in caught]


@pytest.fixture
def import_paths(monkeypatch):
    """Undo what loading a config adds to sys.path and the import fallbacks."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(config_module, "CONFIG_DIRS", [], raising=False)


def test_config_paths_resolve_in_the_working_directory_then_the_configs(cli, tmp_path, monkeypatch, capsys, import_paths):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir(), elsewhere.mkdir()
    (project / "hostile_cfg_data.py").write_text(
        "import torch\n\ndef make(seed=0):\n    g = torch.Generator().manual_seed(seed)\n"
        "    x = torch.randn(64, 4, generator=g)\n    y = (x[:, 0] > 0).long()\n    return (x[:48], y[:48]), (x[48:], y[48:])\n")
    config = {"name": "paths", "device": "cpu", "dataset": {"name": "hostile_cfg_data:make", "batch_size": 16},
              "model": {"name": "mlp", "hidden": [8]}, "policy": {"name": "fixed", "lr": 0.1}, "train": {"steps": 2}}
    (project / "c.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(elsewhere)
    assert cli("train", project / "c.yaml", "--run-dir", elsewhere / "pre", "-q") == 0
    config["model"]["weights"] = "pre"  # in the working directory
    (project / "ft.yaml").write_text(yaml.safe_dump(config))
    assert load_config(project / "ft.yaml").model.weights == "pre"
    (elsewhere / "pre").rename(project / "pre")  # now beside the config only
    assert load_config(project / "ft.yaml").model.weights == str((project / "pre").resolve())
    config["model"]["weights"] = "missing"
    (project / "ft.yaml").write_text(yaml.safe_dump(config))
    assert cli("validate", project / "ft.yaml") == 2
    assert (f"model.weights: no such file or run directory: missing (looked in the working directory {elsewhere} "
            f"and the config's directory {project})") in one_line_error(capsys)


def test_a_module_in_neither_place_says_where_it_looked(cli, tmp_path, monkeypatch, capsys, import_paths):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"dataset": {"name": "hostile_cfg_missing:make"},
                                                     "policy": {"lr": 0.1}}))
    monkeypatch.chdir(tmp_path.parent)
    assert cli("validate", tmp_path / "c.yaml") == 2
    assert (f"No module named 'hostile_cfg_missing' (looked in the working directory {tmp_path.parent} "
            f"and the config's directory {tmp_path})") in one_line_error(capsys)


@pytest.mark.parametrize("option, hint", [(["--epochs", "3"], "train.epochs=3"), (["--batch-size=64"], "dataset.batch_size=64"),
                                          (["--lr", "0.1"], "policy.lr=0.1")])
def test_an_unknown_option_named_like_a_config_key_points_to_the_override(cli, tiny_config, capsys, option, hint):
    assert cli("train", tiny_config(), *option) == 2
    err = capsys.readouterr().err
    assert f"No such option: {option[0].partition('=')[0]}" in err and f"write the override {hint}" in err, err
