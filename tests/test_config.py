"""Config loading and validation: every bad input is one ConfigError line naming the key,
at the loader and at the CLI (exit 2, no traceback, no run directory). Property-based."""

import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clrctl.config.schema import Config, apply_override, load_config, resolve_steps, validate
from clrctl.runs.bounds import resolve_bounds_from
from clrctl.errors import ConfigError

from conftest import CONFIGS

VALID = yaml.safe_load((CONFIGS / "digits-triangular2.yaml").read_text())
SECTIONS = ("dataset", "model", "optimizer", "policy", "train", "range_test")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def refused(data) -> str:
    with pytest.raises(ConfigError) as info:
        validate(data)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def with_value(section: str, key: str, value):
    data = yaml.safe_load(yaml.safe_dump(VALID))
    data.setdefault(section, {})[key] = value
    return data


def test_bundled_configs_are_valid():
    for path in sorted(CONFIGS.glob("*.yaml")):
        assert isinstance(load_config(path), Config), path


def test_defaults_are_defined_once_and_spelled_out():
    config = validate({"policy": {"name": "triangular", "bounds": [0.01, 0.1]}})
    assert config.train.epochs == 8 and config.dataset.batch_size == 32 and config.device == "auto"
    assert config.policy.effective_gamma == 1.0
    assert validate({"policy": {"name": "exp_range", "bounds": [0.01, 0.1]}}).policy.effective_gamma == 0.99994


def test_resolve_steps():
    assert resolve_steps(2000, 500) == 2000
    assert resolve_steps("2 epochs", 43) == 86
    assert resolve_steps("1 epoch", 43) == 43
    assert resolve_steps("0.5 epochs", 43) == 22
    assert resolve_steps("30 steps", 43) == 30


def test_overrides_parse_yaml_values_and_create_sections():
    data = {}
    apply_override(data, "policy.bounds=[0.01, 0.1]")
    apply_override(data, "train.target={val_acc: 0.9}")
    apply_override(data, "dataset.download=true")
    assert data == {"policy": {"bounds": [0.01, 0.1]}, "train": {"target": {"val_acc": 0.9}},
                    "dataset": {"download": True}}
    with pytest.raises(ConfigError, match="is not a section"):
        apply_override({"policy": "fixed"}, "policy.name=fixed")


def test_unknown_key_suggests_the_right_one():
    assert refused(with_value("policy", "stepsise", 3)) == "policy.stepsise: unknown key (did you mean 'stepsize'?)"
    assert refused({**VALID, "optimiser": {}}) == "optimiser: unknown key (did you mean 'optimizer'?)"


def test_bounds_from_a_range_test_run(tmp_path):
    import json

    run = tmp_path / "rt"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "completed", "suggestion": {"base_lr": 0.02,
                                                                                        "max_lr": 0.08}}))
    config = validate(with_value("policy", "bounds", {"from": str(run)}))
    assert resolve_bounds_from(config).policy.bounds == (0.02, 0.08)
    with pytest.raises(ConfigError, match="policy.bounds.from: .* is not a finished run"):
        resolve_bounds_from(validate(with_value("policy", "bounds", {"from": str(tmp_path / "missing")})))


# -- property-based: nothing but one ConfigError line, ever ---------------------------

@FAST
@given(st.text(alphabet=string.printable, max_size=200))
def test_any_yaml_text_is_loaded_or_refused_cleanly(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as err:
        assert "\n" not in str(err)


identifiers = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12)


@FAST
@given(st.sampled_from(SECTIONS), identifiers)
def test_unknown_keys_are_named(section, key):
    known = Config.model_fields[section].annotation.model_fields
    if key in known:
        return
    assert refused(with_value(section, key, 1)).startswith(f"{section}.{key}: unknown key")


wrong_values = st.one_of(st.lists(st.integers(), min_size=3, max_size=3), st.dictionaries(identifiers, st.integers(),
                         min_size=1, max_size=2), st.text(alphabet=string.ascii_letters, min_size=1, max_size=8))


@FAST
@given(st.sampled_from([("dataset", "batch_size"), ("dataset", "val_fraction"), ("optimizer", "momentum"),
                        ("optimizer", "weight_decay"), ("policy", "gamma"), ("policy", "stepsize"),
                        ("train", "epochs"), ("range_test", "start_lr"), ("policy", "bounds"),
                        ("dataset", "download"), ("model", "hidden")]), wrong_values)
def test_wrong_types_name_the_key(section_key, value):
    section, key = section_key
    if key == "stepsize" and isinstance(value, str) and value.endswith(("epoch", "epochs")):
        return
    if key == "hidden" and isinstance(value, list):
        return  # a list of ints is a valid hidden spec
    if key == "download" and isinstance(value, str) and value.lower() in ("yes", "no", "true", "false", "on", "off",
                                                                           "y", "n", "t", "f"):
        return
    assert refused(with_value(section, key, value)).startswith(f"{section}.{key}")


@FAST
@given(st.sampled_from([
    ("policy", "bounds", st.tuples(st.floats(-10, 0), st.floats(0.01, 1)).map(list)),          # negative LR
    ("policy", "bounds", st.floats(0.01, 1).map(lambda x: [x, x])),                           # base == max
    ("policy", "bounds", st.tuples(st.floats(0.5, 1), st.floats(0.01, 0.49)).map(list)),     # base > max
    ("policy", "stepsize", st.integers(-100, 0)),
    ("dataset", "batch_size", st.integers(-100, 0)),
    ("dataset", "val_fraction", st.one_of(st.floats(-5, 0), st.floats(1, 5))),
    ("optimizer", "momentum", st.one_of(st.floats(-5, -0.01), st.floats(1, 5))),
    ("train", "epochs", st.integers(-10, 0)),
    ("range_test", "end_lr", st.floats(-1, 0)),
]).flatmap(lambda t: st.tuples(st.just(t[0]), st.just(t[1]), t[2])))
def test_out_of_range_numbers_name_the_key(case):
    section, key, value = case
    assert refused(with_value(section, key, value)).startswith(f"{section}.{key}")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["policy.bounds=[0.1, 0.01]", "policy.stepsize=-3", "dataset.batch_size=0",
                        "dataset.val_fraction=1.0", "model.name=nosuchmodule_xyz:build", "model.name=json:nothere",
                        "model.name=torchvision:resnet_nope", "model.name=lenet5", "dataset.name=mnist",
                        "polcy.name=fixed", "train.epochs=many", "policy.lr=-0.1", "device=tpu"]))
def test_cli_refuses_bad_input_with_exit_2_and_no_run_dir(cli, tmp_path_factory, capsys, override):
    root = tmp_path_factory.mktemp("runs")
    extra = [f"dataset.root={root / 'nodata'}"] if override.startswith("dataset.name") else []
    code = cli("train", CONFIGS / "digits-triangular2.yaml", override, *extra, "--runs-root", root / "runs")
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    key = override.split("=")[0].split(".")[0]
    assert key in err or override.split("=")[0] in err
    assert not (root / "runs").exists()
