"""clrctl sweep / compare SWEEP_DIR: what issue 16 found — cut values, ties, the dry run's
listing, the progress counter, another grid on an existing directory, the heatmap's scale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from test_compare_support import base_config, make_run

POINTS = [("triangular", "1 epochs"), ("triangular", "2 epochs"), ("triangular2", "1 epochs"), ("triangular2", "2 epochs")]


def make_sweep(path: Path, accs: list[float], steps: list[int] | None = None, seeds=(0, 1, 2)) -> Path:
    """A finished sweep directory as ``clrctl sweep`` writes it: policy.name x policy.stepsize,
    each point a seed group whose seeds reach ``accs[i]`` (+0.01 per seed) at ``steps[i]``."""
    points = []
    for i, (name, stepsize) in enumerate(POINTS):
        point = f"policy-{name}_stepsize-{stepsize.replace(' ', '')}"
        runs = []
        for seed in seeds:
            rel = f"points/{point}/seed-{seed}"
            hit = (steps or [99] * len(POINTS))[i]
            evals = {49: 0.5, min(hit, 99): accs[i] + 0.01 * seed, 99: accs[i] + 0.01 * seed}
            make_run(path / rel, evals, seed=seed, config=base_config(
                seed=seed, policy__name=name, policy__stepsize=stepsize, policy__bounds=[0.01, 0.1],
                train__target={"val_acc": 0.97}))
            runs.append({"seed": seed, "path": rel, "status": "completed"})
        points.append({"name": point, "overrides": {"policy.name": name, "policy.stepsize": stepsize},
                       "included": False, "seeds": list(seeds), "status": "completed", "path": f"points/{point}",
                       "config": f"configs/{point}.yaml", "runs": runs})
    index = {"schema_version": 1, "kind": "sweep", "name": "a-rather-long-sweep-name-for-narrow-terminals",
             "grid": {"policy.name": ["triangular", "triangular2"], "policy.stepsize": ["1 epochs", "2 epochs"]},
             "include": [], "seeds": ",".join(map(str, seeds)), "points": points}
    (path / "sweep.json").write_text(json.dumps(index))
    return path


def compare_piped(*args, columns: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.pop("COLUMNS", None)
    if columns:
        env["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-m", "clrctl", "compare", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("columns", [None, 80, 60])
def test_the_ranking_never_cuts_a_value(tmp_path, columns):
    sweep = make_sweep(tmp_path / "s", [0.95, 0.96, 0.97, 0.94])
    result = compare_piped(sweep, "--target", "val_acc=0.97", columns=columns)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= (columns or 80)
    for value in ("triangular2", "2 epochs", "0.9800 [0.9700–0.9900]", "3 completed"):
        assert value in out, value
    # each point's policy is readable as a whole word: triangular (2 points), triangular2 (2 points)
    assert sum(" triangular2" in line or line.endswith("triangular2") for line in out.splitlines()) == 2


def test_a_tie_is_called_a_tie(cli, tmp_path, capsys):
    sweep = make_sweep(tmp_path / "s", [0.95, 0.97, 0.97, 0.94])
    assert cli("compare", sweep, "-q") == 0
    out = capsys.readouterr().out
    assert "tie for best (2 points): policy-triangular_stepsize-2epochs, policy-triangular2_stepsize-1epochs" in out
    assert "; best:" not in out and out.strip().count("\n") == 0


def test_the_heatmap_says_when_no_point_reached_the_target(cli, tmp_path, capsys):
    sweep = make_sweep(tmp_path / "s", [0.90, 0.91, 0.92, 0.93])
    from clrctl.compare.metrics import parse_target
    from clrctl.compare.sweep import build_sweep_report
    from clrctl.plots.sweep import sweep_figure

    report = build_sweep_report(sweep, "steps_to_target", parse_target("val_acc=0.99"))
    fig = sweep_figure(report)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "no point reached the target" in " ".join(texts)
    assert len(fig.axes) == 1  # no colour bar of a made-up −0.1…0.1 scale
    assert cli("compare", sweep, "--metric", "steps_to_target", "--target", "val_acc=0.99",
               "--plot", tmp_path / "h.png") == 0 and (tmp_path / "h.png").stat().st_size > 0


def test_the_heatmap_scale_does_not_exaggerate_a_small_difference(tmp_path):
    sweep = make_sweep(tmp_path / "s", [0.970, 0.971, 0.972, 0.973])
    from clrctl.compare.sweep import build_sweep_report
    from clrctl.plots.sweep import sweep_figure

    report = build_sweep_report(sweep, "final_val_acc", None)
    fig = sweep_figure(report)
    low, high = fig.axes[0].images[0].get_clim()
    assert high - low >= 0.05 - 1e-9  # 0.3 points of accuracy between the cells: not the whole colour range
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("n=3" in t and "0.983" in t and "0.993" in t for t in texts), texts  # the seeds' spread


def test_dry_run_lists_whole_names_yaml_values_and_the_seed_count(tiny_config, cli, capsys):
    config = tiny_config("tiny")
    assert cli("sweep", config, "-g", "policy.bounds=[0.01,0.1],[0.02,0.2]", "-g", "policy.name=triangular,triangular2",
               "-g", "train.target=null,{val_acc: 0.9}", "--seeds", "3", "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.startswith("8 points × 3 seeds = 24 runs")
    assert "…" not in out and "None" not in out and max(map(len, out.splitlines())) <= 80
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert "train.target null" in lines and "train.target {val_acc: 0.9}" in lines and "policy.bounds [0.02, 0.2]" in lines
    assert "bounds-0.02-0.2_policy-triangular2_target-val_acc-0.9" in out  # a whole point name


def test_the_progress_counter_counts_finished_runs_not_interrupted_ones(capsys):
    from clrctl.commands.sweep import _Printer
    from clrctl.sweep.plan import RunRef
    from clrctl.sweep.runner import Outcome

    printer = _Printer(quiet=False)
    printer.start(3, 0)
    refs = [RunRef(f"p{i}", 0, f"points/p{i}") for i in range(3)]
    for ref, status in zip(refs, ("completed", "interrupted", "interrupted")):
        printer.finished(Outcome(ref, status, 0 if status == "completed" else 130, "", 1.0))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["[1/3]", "[1/3]", "[1/3]"]
