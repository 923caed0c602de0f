"""``clrctl.optim.preview`` (the maths behind ``clrctl preview``) and ``clrctl.commands.options``
(the options several commands share), without the CLI's rendering."""

import math
import subprocess
import sys
import textwrap

import pytest

from conftest import CONFIGS, REPO


def load(path, *overrides):
    from clrctl.config.schema import load_config

    return load_config(path, list(overrides))


def test_rows_are_evenly_spaced_with_first_and_last():
    from clrctl.optim.preview import pick_rows

    assert pick_rows(5, None) == [0, 1, 2, 3, 4]
    assert pick_rows(344, 2) == [0, 343]
    assert pick_rows(344, 5) == [0, 86, 172, 257, 343]
    assert pick_rows(3, 10) == [0, 1, 2]  # more rows than steps: each step once


def test_epoch_of_a_step_is_metrics_csv_epoch_column():
    from clrctl.optim.preview import epoch_of

    assert [epoch_of(t, 22) for t in (0, 21, 22, 43)] == [1, 1, 2, 2]
    assert epoch_of(5, None) is None


def test_stepsize_and_epoch_durations():
    from clrctl.optim.preview import in_epochs, needs_epoch_length, stepsize_steps

    cfg = load(CONFIGS / "digits-triangular2.yaml")
    assert stepsize_steps(cfg.policy, 43) == 86 and cfg.policy.stepsize == "2 epochs"
    assert stepsize_steps(load(CONFIGS / "digits-one_cycle.yaml").policy, 43) is None
    assert in_epochs("2 epochs") and not in_epochs(86) and not in_epochs("86")
    assert needs_epoch_length(cfg, sweep=False)
    assert not needs_epoch_length(load(CONFIGS / "digits-triangular2.yaml", "train.epochs=null", "train.steps=100",
                                       "policy.stepsize=20"), sweep=False)


def test_a_staged_preview_has_one_step_counter_stages_and_group_columns(tiny_config):
    from clrctl.optim.preview import build_preview, steps_per_epoch

    stages = [{"name": "head-only", "epochs": 1, "freeze": ["body"],
               "policy": {"name": "one_cycle", "bounds": [0.01, 0.1]}},
              {"name": "all", "epochs": 1, "policy": {"name": "one_cycle", "bounds": [0.002, 0.02]}}]
    cfg = load(tiny_config("staged", stages=stages, train={"epochs": None},
                           optimizer={"name": "sgd", "momentum": 0.9,
                                      "groups": [{"name": "body", "params": ["1.*"], "lr_mult": 0.1},
                                                 {"name": "head", "params": ["3.*"]}]}))
    spe = steps_per_epoch(cfg, sweep=False)
    assert spe == 22  # 1347 digits / batch 64, known without loading them
    shown = build_preview(cfg, spe, sweep=False)
    assert [step for step, _, _ in shown.trace] == list(range(44))
    assert shown.stages == ["head-only"] * 22 + ["all"] * 22
    assert shown.trace[0][1] == pytest.approx(0.01) and shown.trace[22][1] == pytest.approx(0.002)
    assert list(shown.groups) == ["body", "head"]
    assert all(math.isnan(lr) for lr in shown.groups["body"][:22])
    assert shown.groups["body"][22] == pytest.approx(0.1 * shown.trace[22][1])
    assert shown.groups["head"] == [lr for _, lr, _ in shown.trace]


def test_a_sweep_preview_is_the_range_tests_lr_with_constant_momentum():
    from clrctl.optim.preview import build_preview, sweep_steps
    from clrctl.rangetest.sweep import lr_at

    cfg = load(CONFIGS / "digits-range-test.yaml")
    rt = cfg.range_test
    shown = build_preview(cfg, 43, sweep=True)
    assert len(shown.trace) == sweep_steps(cfg, 43) == 344
    assert shown.trace[-1][1] == pytest.approx(rt.end_lr)
    assert [lr for _, lr, _ in shown.trace[:3]] == [lr_at(t, 344, rt.start_lr, rt.end_lr, rt.mode) for t in range(3)]
    assert {m for _, _, m in shown.trace} == {cfg.optimizer.momentum}
    assert shown.stages == [None] * 344 and shown.groups == {}


def test_an_epoch_length_that_needs_missing_data_is_its_own_error(tmp_path):
    from clrctl.errors import ConfigError
    from clrctl.optim.preview import EpochLengthUnknown, steps_per_epoch

    cfg = load(CONFIGS / "digits-triangular2.yaml", "dataset.name=imagefolder", f"dataset.root={tmp_path / 'none'}")
    with pytest.raises(EpochLengthUnknown) as caught:
        steps_per_epoch(cfg, sweep=False)
    assert isinstance(caught.value, ConfigError) and "dataset.root" in str(caught.value)


def test_the_workers_command_line_drops_nproc_in_both_spellings():
    from clrctl.commands.options import without_nproc

    assert without_nproc(["train", "c.yaml", "--nproc", "2", "-q"]) == ["train", "c.yaml", "-q"]
    assert without_nproc(["range-test", "--nproc=4", "c.yaml"]) == ["range-test", "c.yaml"]


def test_help_and_the_preview_library_import_no_torch():
    """``clrctl --help`` imports every command module, so none may import torch when loaded."""
    code = textwrap.dedent("""
        import sys
        import clrctl.optim.preview
        from clrctl.cli import main
        try:
            main(["--help"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        print("HEAVY=" + ",".join(m for m in ("torch", "matplotlib", "numpy") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY=\n" in out.stdout
