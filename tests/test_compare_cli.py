"""`clrctl compare` end to end: exit codes 0/1/2, the gate, groups, outputs, range tests, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_compare_support import base_config, make_group, make_range_test, make_run

REPO = Path(__file__).resolve().parents[1]


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def pair(tmp_path):
    """A baseline (fixed LR) and a CLR candidate that reaches 0.97 twice as fast."""
    base = make_run(tmp_path / "fixed", {19: 0.90, 39: 0.96, 59: 0.97, 79: 0.975, 99: 0.975})
    cand = make_run(tmp_path / "clr", {19: 0.95, 29: 0.97, 59: 0.975, 99: 0.98},
                    config=base_config(policy__name="triangular2", policy__bounds=[0.02, 0.1], policy__lr=None))
    return base, cand


# -- exit 0 ----------------------------------------------------------------------------------------
def test_table_shows_metrics_diffs_speedup_and_config(cli, pair, capsys):
    assert cli("compare", *pair, "--target", "val_acc=0.97") == 0
    out = capsys.readouterr().out
    for needle in ("final val acc", "steps to target", "AUC val acc", "better", "2.00×", "policy.name", "triangular2"):
        assert needle in out, needle


def test_baseline_option_picks_another_run(cli, pair, capsys):
    base, cand = pair
    assert cli("compare", base, cand, "--baseline", cand, "--target", "val_acc=0.97", "--format", "json") == 0
    report = _strict_json(capsys.readouterr().out)
    assert report["baseline"] == "clr"
    assert report["comparisons"][0]["candidate"] == "fixed"
    assert report["comparisons"][0]["speedup"]["value"] == pytest.approx(0.5)


def test_json_report(cli, pair, capsys):
    assert cli("compare", *pair, "--target", "val_acc=0.97", "--format", "json") == 0
    report = _strict_json(capsys.readouterr().out)
    assert report["schema_version"] == 1 and report["kind"] == "train"
    assert report["target"] == {"metric": "val_acc", "value": 0.97}
    entry = report["comparisons"][0]["metrics"]["steps_to_target"]
    assert (entry["old"], entry["new"], entry["diff"], entry["direction"], entry["verdict"]) == (60, 30, -30, "lower", "better")
    acc = report["comparisons"][0]["metrics"]["final_val_acc"]
    assert acc["diff"] == pytest.approx(0.005) and acc["direction"] == "higher"
    assert report["comparisons"][0]["speedup"]["value"] == 2.0
    assert {d["key"] for d in report["comparisons"][0]["config_diff"]} == {"policy.name", "policy.lr", "policy.bounds"}
    assert report["verdict"] == "pass" and report["gate"]["enabled"] is False


def test_markdown_report_and_output_file(cli, pair, tmp_path, capsys):
    out_file = tmp_path / "out" / "report.md"
    plot = tmp_path / "out" / "compare.png"
    assert cli("compare", *pair, "--target", "val_acc=0.97", "--format", "markdown",
               "--output", out_file, "--plot", plot) == 0
    text = out_file.read_text()
    assert text.startswith("### clrctl compare ✅ pass")
    assert "| metric | better | fixed | clr |" in text
    assert "| steps to target | ↓ | 60 | 30 |" in text
    assert "<details><summary>changed config keys" in text
    assert "![compare](compare.png)" in text  # relative to the report, for PR comments
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "pass" in capsys.readouterr().out


def test_table_output_file_is_plain_text(cli, pair, tmp_path):
    out_file = tmp_path / "report.txt"
    assert cli("compare", *pair, "--output", out_file) == 0
    text = out_file.read_text()
    assert "final val acc" in text and "\x1b[" not in text


# -- the gate: exit 1 ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cand_acc, tolerance, code",
    [
        (0.95, "0.01", 1),  # 2 pp worse, 1 pp allowed
        (0.965, "0.01", 0),  # within tolerance
        (0.955, "2%", 0),  # 2% of 0.97 = 0.0194 > 0.015
        (0.95, "2%", 1),  # 0.02 > 0.0194
        (0.99, "0", 0),  # better
    ],
)
def test_gate_on_single_runs(cli, tmp_path, capsys, cand_acc, tolerance, code):
    base = make_run(tmp_path / "base", {99: 0.97})
    cand = make_run(tmp_path / "cand", {99: cand_acc})
    assert cli("compare", base, cand, "--gate", "--metric", "final_val_acc", "--tolerance", tolerance) == code
    err = capsys.readouterr().err
    assert ("regression: cand vs base on final_val_acc" in err) == (code == 1)


def test_gate_on_a_lower_is_better_metric(cli, tmp_path):
    base = make_run(tmp_path / "base", {9: 0.97}, steps=100)
    slow = make_run(tmp_path / "slow", {49: 0.97}, steps=100)
    args = ("--target", "val_acc=0.97", "--gate", "--metric", "steps_to_target", "--tolerance", "10%")
    assert cli("compare", base, slow, *args) == 1
    assert cli("compare", slow, base, *args) == 0


def test_diverged_candidate_without_accuracy_fails_the_gate(cli, tmp_path, capsys):
    base = make_run(tmp_path / "base", {99: 0.97})
    bad = make_run(tmp_path / "bad", {}, steps=30, status="diverged")
    assert cli("compare", base, bad, "--gate") == 1
    assert "status diverged" in capsys.readouterr().out


def _groups(tmp_path, cand_accs):
    base = make_group(tmp_path / "base", {s: {99: 0.97} for s in range(3)})
    cand = make_group(tmp_path / "cand", {s: {99: acc} for s, acc in enumerate(cand_accs)})
    return base, cand


def test_group_regression_judged_on_the_interval(cli, tmp_path, capsys):
    base, cand = _groups(tmp_path, [0.94, 0.945, 0.95])
    assert cli("compare", base, cand, "--gate", "--tolerance", "0.01", "--format", "json") == 1
    report = _strict_json(capsys.readouterr().out)
    entry = report["comparisons"][0]["metrics"]["final_val_acc"]
    assert (entry["ci_low"], entry["ci_high"]) == pytest.approx((-0.03, -0.02))
    assert report["gate"]["result"] == "regression" and report["verdict"] == "regression"


def test_one_lucky_or_unlucky_seed_is_inconclusive_not_a_regression(cli, tmp_path, capsys):
    base, cand = _groups(tmp_path, [0.95, 0.95, 0.99])  # median 2 pp worse, one seed 2 pp better
    assert cli("compare", base, cand, "--gate", "--tolerance", "0.01", "--format", "json") == 0
    report = _strict_json(capsys.readouterr().out)
    assert report["gate"]["result"] == "inconclusive"
    assert report["comparisons"][0]["metrics"]["final_val_acc"]["verdict"] == "inconclusive"
    assert cli("compare", base, cand, "--gate", "--tolerance", "0.01", "--strict") == 1


def test_groups_by_glob_and_subdirectories(cli, tmp_path, capsys):
    base, cand = _groups(tmp_path, [0.97, 0.975, 0.98])
    (cand / "group.json").unlink()  # a plain directory of runs is a group too
    assert cli("compare", f"{base}/seed-*", cand, "--format", "json") == 0
    report = _strict_json(capsys.readouterr().out)
    assert [r["n"] for r in report["runs"]] == [3, 3]
    assert report["runs"][0]["seeds"] == [0, 1, 2]
    assert report["comparisons"][0]["paired"] is True


def test_small_groups_get_a_note(cli, tmp_path, capsys):
    base = make_group(tmp_path / "base", {0: {99: 0.97}, 1: {99: 0.96}})
    cand = make_group(tmp_path / "cand", {0: {99: 0.97}, 1: {99: 0.97}})
    assert cli("compare", base, cand) == 0
    assert "only 2 run(s)" in capsys.readouterr().out


# -- not comparable -----------------------------------------------------------------------------------
def test_other_dataset_is_flagged_not_comparable(cli, tmp_path, capsys):
    base = make_run(tmp_path / "base", {99: 0.97})
    other = make_run(tmp_path / "other", {99: 0.97}, config=base_config(dataset__name="synthetic"))
    assert cli("compare", base, other, "--gate", "--format", "json") == 0
    report = _strict_json(capsys.readouterr().out)
    comp = report["comparisons"][0]
    assert comp["comparable"] is False and comp["not_comparable"] == ["dataset.name"]
    assert report["verdict"] == "incomparable"
    assert cli("compare", base, other) == 0
    assert "NOT COMPARABLE: dataset.name" in capsys.readouterr().out


# -- exit 2: bad input --------------------------------------------------------------------------------
def _running(tmp_path):
    return make_run(tmp_path / "running", {9: 0.9}, status="running")


def _garbled_json(tmp_path):
    path = make_run(tmp_path / "garbled", {9: 0.9})
    (path / "run.json").write_text("{not json")
    return path


def _garbled_csv(tmp_path):
    path = make_run(tmp_path / "garbled", {9: 0.9})
    with open(path / "metrics.csv", "a") as handle:
        handle.write("100,2,0.01,0.9,oops,,\n")
    return path


def _no_metrics(tmp_path):
    path = make_run(tmp_path / "nometrics", {9: 0.9})
    (path / "metrics.csv").unlink()
    return path


@pytest.mark.parametrize(
    "make_bad, needle",
    [
        (lambda tmp: tmp / "missing", "no such run directory"),
        (_running, "left 'running' by a process that is gone"),
        (_garbled_json, "run.json: unreadable"),
        (_garbled_csv, "metrics.csv: unreadable (line"),
        (_no_metrics, "no metrics.csv"),
        (lambda tmp: str(tmp / "nothing-*"), "no run directories match"),
    ],
)
def test_missing_unfinished_or_unreadable_run_exits_2_with_one_line(cli, tmp_path, capsys, make_bad, needle):
    good = make_run(tmp_path / "good", {9: 0.9})
    assert cli("compare", good, make_bad(tmp_path), "--gate") == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--target", "accuracy=0.9"], "--target"),
        (["--tolerance", "lots"], "--tolerance"),
        (["--metric", "steps"], "--metric"),
    ],
)
def test_bad_arguments_exit_2(cli, pair, capsys, args, needle):
    assert cli("compare", *pair, *args) == 2
    assert needle in capsys.readouterr().err


def test_one_run_is_a_summary_not_a_gate(cli, pair, capsys):
    assert cli("compare", pair[0], "--gate") == 2
    assert "--gate needs a candidate" in capsys.readouterr().err


def test_unknown_format_is_a_usage_error(pair):
    from typer.testing import CliRunner

    from clrctl.cli import app

    result = CliRunner().invoke(app, ["compare", *map(str, pair), "--format", "xml"])
    assert result.exit_code == 2


def test_group_json_without_runs_exits_2(cli, tmp_path, capsys):
    good = make_run(tmp_path / "good", {9: 0.9})
    group = tmp_path / "group"
    group.mkdir()
    (group / "group.json").write_text(json.dumps({"kind": "group", "runs": []}))
    assert cli("compare", good, group) == 2
    assert "group.json: unreadable" in capsys.readouterr().err


# -- range tests ------------------------------------------------------------------------------------
def _range_pair(tmp_path, mode="exp"):
    lrs = [1e-4 * 10 ** (i / 10) for i in range(41)]  # 1e-4 .. 1
    losses_a = [2.3 - 0.04 * i if i < 30 else 1.1 + 0.3 * (i - 30) for i in range(41)]
    losses_b = [2.3 - 0.03 * i if i < 20 else 1.7 + 0.3 * (i - 20) for i in range(41)]
    a = make_range_test(tmp_path / "rt-a", lrs, losses_a, {"base_lr": 0.025, "max_lr": 0.1}, mode=mode)
    b = make_range_test(tmp_path / "rt-b", lrs, losses_b, {"base_lr": 0.0025, "max_lr": 0.01}, mode=mode)
    return a, b


def test_range_tests_compare_by_suggestion(cli, tmp_path, capsys):
    a, b = _range_pair(tmp_path)
    plot = tmp_path / "rt.png"
    assert cli("compare", a, b, "--format", "json", "--plot", plot) == 0
    report = _strict_json(capsys.readouterr().out)
    assert report["kind"] == "range-test"
    assert report["runs"][0]["metrics"]["max_lr"]["median"] == 0.1
    # the range test's loss_min rule: the zero-phase smoothed kink sits one step before the raw minimum
    assert report["runs"][0]["metrics"]["lr_at_min_loss"]["median"] == pytest.approx(1e-4 * 10 ** 2.9)
    assert report["comparisons"][0]["max_lr_shift_decades"] == pytest.approx(-1.0)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert cli("compare", a, b) == 0
    assert "-1.00 decades" in capsys.readouterr().out


def test_range_tests_refuse_gate_and_mixing_with_training(cli, tmp_path, capsys):
    a, b = _range_pair(tmp_path)
    train = make_run(tmp_path / "train", {9: 0.9})
    assert cli("compare", a, b, "--gate") == 2
    assert "range tests compare by their suggestions" in capsys.readouterr().err
    assert cli("compare", a, train) == 2
    assert "cannot compare training runs with range tests" in capsys.readouterr().err


# -- speed and imports -----------------------------------------------------------------------------
def test_compare_never_imports_torch_or_matplotlib(pair):
    code = textwrap.dedent(f"""
        import sys
        from clrctl.cli import main
        try:
            main(["compare", {str(pair[0])!r}, {str(pair[1])!r}, "--format", "json"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        heavy = sorted(m for m in ("torch", "matplotlib", "torchvision") if m in sys.modules)
        print("HEAVY=" + ",".join(heavy))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY=\n" in out.stdout


def test_the_commands_copies_of_gate_metrics_and_bootstrap_agree_with_clrctl_compare():
    from clrctl.commands import compare as command
    from clrctl.compare.metrics import GATE_METRICS
    from clrctl.compare.stats import N_BOOTSTRAP

    assert command.GATE_METRICS == GATE_METRICS and command.N_BOOTSTRAP == N_BOOTSTRAP


def test_real_runs_from_tiny_trainings(cli, tiny_config, tmp_path, capsys):
    """Two real (tiny) trainings through the CLI, then compare them; compare agrees with the trainer."""
    cfg = tiny_config("tiny", train={"epochs": 2, "eval_every": 2, "target": {"val_acc": 0.3}})
    common = ("dataset.name=synthetic", "dataset.num_samples=512", "-q")
    assert cli("train", cfg, *common, "--run-dir", tmp_path / "clr") == 0
    assert cli("train", cfg, *common, "policy.name=fixed", "policy.bounds=null", "policy.lr=0.01",
               "--run-dir", tmp_path / "fixed") == 0
    capsys.readouterr()
    assert cli("compare", tmp_path / "fixed", tmp_path / "clr", "--format", "json") == 0
    report = _strict_json(capsys.readouterr().out)
    assert report["target"] == {"metric": "val_acc", "value": 0.3}
    assert [d["key"] for d in report["comparisons"][0]["config_diff"]] == ["policy.name", "policy.bounds", "policy.lr"]
    for run in report["runs"]:
        summary = json.loads((Path(run["per_run"][0]["path"]) / "summary.json").read_text())
        assert run["metrics"]["final_val_acc"]["median"] == pytest.approx(summary["final_val_acc"])
        recorded = summary["steps_to_target"]
        recorded = recorded.get("val_acc", {}).get("step") if isinstance(recorded, dict) else recorded
        if recorded is not None:
            assert run["metrics"]["steps_to_target"]["median"] == recorded
