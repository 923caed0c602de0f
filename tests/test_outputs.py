"""What clrctl writes and prints after a run (issue 16): suggested.yaml of a staged range
test, strict JSON after a divergence, consistent step counts, staged plots and config.yaml,
progress lines, export, and the one-line messages around them."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from clrctl.config.schema import load_config
from conftest import CONFIGS

STAGES = [
    {"name": "head-only", "epochs": 1, "freeze": ["body"], "policy": {"name": "one_cycle", "bounds": [0.01, 0.1]}},
    {"name": "all", "epochs": 1, "policy": {"name": "one_cycle", "bounds": [0.002, 0.02]}},
]


def strict_json(path):
    """``json.loads`` that refuses NaN / Infinity (what a strict parser such as jq or JS does)."""

    def refuse(constant):
        raise ValueError(f"{path}: non-standard JSON constant {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


@pytest.fixture
def staged_no_policy(tmp_path):
    """A staged config without a top-level policy: every stage brings its own (as
    configs/digits-finetune.yaml does)."""
    config = {
        "name": "staged", "seed": 0, "device": "cpu",
        "dataset": {"name": "digits", "batch_size": 64},
        "model": {"name": "mlp", "hidden": [32]},
        "optimizer": {"name": "sgd", "momentum": 0.9,
                      "groups": [{"name": "body", "params": ["1.*"], "lr_mult": 0.1},
                                 {"name": "head", "params": ["3.*"]}]},
        "stages": STAGES,
        "train": {"eval_every": 5},
    }
    path = tmp_path / "staged.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# -- item 1: suggested.yaml of a staged range test ------------------------------------------------


@pytest.mark.parametrize("stage, index", [("head-only", 0), ("all", 1)])
def test_suggested_yaml_of_a_stage_trains_and_adds_no_top_level_policy(cli, staged_no_policy, tmp_path,
                                                                      stage, index):
    run = tmp_path / "rt"
    assert cli("range-test", staged_no_policy, "--stage", stage, "--run-dir", run, "-q",
               "range_test.steps=60", "range_test.eval_every=5", "range_test.end_lr=2") == 0
    suggested = yaml.safe_load((run / "suggested.yaml").read_text())
    assert "policy" not in suggested  # (was a stray `policy: {}`: fixed without bounds)
    assert suggested["stages"][index]["policy"]["name"] == "one_cycle"
    assert cli("train", run / "suggested.yaml", "--run-dir", tmp_path / "train", "-q") == 0


# -- preview: every step, and what a range test's suggested.yaml trains --------------------------------


def test_preview_prints_every_step_unless_rows_are_asked_for(cli, tiny_config, capsys):
    config = tiny_config()  # 2 epochs of 22 steps
    assert cli("preview", config) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "step\tepoch\tlr\tmomentum"  # tab-separated when piped
    assert [int(line.split("\t")[0]) for line in lines[2:]] == list(range(44))
    assert cli("preview", config, "--rows", "3") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines[2:5]] == ["0", "22", "43"]
    assert lines[5] == "(3 of 44 steps; without --rows every step)"


def test_preview_policy_of_a_range_test_config_names_what_suggested_yaml_trains(cli, tiny_config, capsys):
    config = tiny_config(name="tiny-range-test", policy={"name": "fixed", "lr": 0.01})
    assert cli("preview", config, "--policy", "--rows", "2") == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == ("suggested.yaml trains triangular2 between the bounds the range test finds, stepsize 7 "
                     "(below: fixed as written)")


# -- items 5 and 8: after a divergence, strict JSON and one step count -------------------------------

DIVERGING = {"name": "fixed", "lr": 1.0e9}


def every_json(root):
    files = sorted(root.rglob("*.json"))
    assert files
    return {str(path.relative_to(root)): strict_json(path) for path in files}


def test_a_diverged_run_writes_strict_json_and_counts_the_steps_it_logged(cli, tiny_config, tmp_path):
    import csv

    run = tmp_path / "run"
    assert cli("train", tiny_config(policy=DIVERGING), "--run-dir", run, "-q", "train.log_every=10") == 1
    files = every_json(run)
    summary = files["summary.json"]
    assert summary["status"] == "diverged" and files["run.json"]["status"] == "diverged"
    assert summary["final_val_loss"] is None and summary["diverged_at"]["loss"] is None  # (was bare NaN)
    with open(run / "metrics.csv", newline="") as handle:
        last = int(list(csv.DictReader(handle))[-1]["step"])
    # (the sync that saw the NaN came up to 9 steps later: steps counted those too)
    assert summary["steps"] == summary["diverged_at"]["step"] + 1 == last + 1
    assert summary["epochs"] == round(summary["steps"] / summary["steps_per_epoch"], 4)


def test_a_diverged_seed_group_and_sweep_write_strict_json(cli, tiny_config, tmp_path):
    config = tiny_config(policy=DIVERGING)
    assert cli("train", config, "--seeds", "2", "--run-dir", tmp_path / "group", "-q") == 1
    files = every_json(tmp_path / "group")
    assert {"group.json", "seed-0/summary.json", "seed-1/run.json"} <= set(files)
    assert cli("sweep", config, "--grid", "policy.lr=1.0e9", "--run-dir", tmp_path / "sweep") == 1
    files = every_json(tmp_path / "sweep")
    assert "sweep.json" in files and any(name.endswith("summary.json") for name in files)


def test_a_range_test_stopped_early_writes_strict_json(cli, tiny_config, tmp_path):
    run = tmp_path / "rt"
    cli("range-test", tiny_config(name="tiny-range-test"), "--run-dir", run, "-q", "--seeds", "2",
        "range_test.steps=40", "range_test.mode=exp", "range_test.end_lr=1e9")
    files = every_json(run)
    assert files["summary.json"]["stopped_early"]
    assert {"seeds/seed-0/summary.json", "seeds/seed-1/summary.json"} <= set(files)


# -- item 10: the progress line's last LR and loss ---------------------------------------------------


def test_the_train_bar_ends_on_the_last_steps_lr_and_the_epochs_running_loss(cli, tiny_config, tmp_path, capsys):
    import csv

    run = tmp_path / "run"
    assert cli("train", tiny_config(), "--run-dir", run) == 0  # (digits: the last batch holds 3 samples)
    bar = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("train ━"))
    with open(run / "epochs.csv", newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    assert f"lr {float(last['lr']):.4g} loss {float(last['train_loss']):.4g} " in bar


def test_the_bar_shows_the_latest_lr_between_redraws():
    from clrctl.track.reporting import RichReporter

    reporter = RichReporter("train")
    reporter.start(200, 0)
    for step in range(1, 201):  # far faster than the bar's 50 ms between redraws
        reporter.advance(step, 0.001 * step)
    reporter.metrics(200, 0.5, 0.9)
    reporter.close()
    assert reporter.progress.tasks[0].fields["lr"] == "0.2"


def test_the_range_test_line_shows_the_last_lr_and_the_smoothed_loss(cli, tiny_config, tmp_path, capsys):
    import csv

    run = tmp_path / "rt"
    cli("range-test", tiny_config(name="tiny-range-test"), "--run-dir", run, "-q", "range_test.steps=37",
        "range_test.eval_every=10")
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("range-test: "))
    with open(run / "metrics.csv", newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    assert f"lr {float(last['lr']):.4g}  loss {float(last['smoothed_loss']):.4g}  " in line


# -- item 7: a staged run's lr.png and config.yaml name the stages' policies ---------------------------


@pytest.mark.plots  # (it reads the plots: conftest skips them elsewhere)
def test_a_staged_runs_lr_plot_and_config_name_the_stages_policies(cli, staged_no_policy, tmp_path, monkeypatch):
    from clrctl.plots import train as train_plots

    drawn = {}
    real_save = train_plots.save
    monkeypatch.setattr(train_plots, "save", lambda fig, path: (drawn.setdefault(path.name, fig), real_save(fig, path)))
    run = tmp_path / "run"
    assert cli("train", staged_no_policy, "--run-dir", run, "-q") == 0
    ax = drawn["lr.png"].axes[0]
    assert ax.get_title() == "staged: one_cycle + one_cycle on digits/mlp"  # (was "staged: fixed on …")
    assert [t.get_text().strip() for t in ax.texts] == ["head-only", "all"]
    boundaries = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"]
    assert boundaries == [22]  # the first step of stage 'all' (22 steps per epoch)
    assert (run / "plots" / "lr.png").is_file()
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert "policy" not in written  # (was the unused default: {name: fixed, lr: 0.01})
    again = load_config(run / "config.yaml")
    assert again.plan() == load_config(staged_no_policy).plan()


def test_a_stage_that_inherits_the_top_level_policy_keeps_it_in_config_yaml(staged_no_policy):
    data = yaml.safe_load(staged_no_policy.read_text())
    data["stages"][1].pop("policy")  # stage 'all' trains the top-level policy
    staged_no_policy.write_text(yaml.safe_dump(data))
    assert load_config(staged_no_policy).to_dict()["policy"]["name"] == "fixed"


# -- --run-dir refusals say what can be done ----------------------------------------------------------


def test_run_dir_refusals_name_a_file_and_suggest_resume_only_where_it_works(cli, tiny_config, tmp_path, capsys):
    config, file = tiny_config(train={"epochs": 1}), tmp_path / "notes.txt"
    file.write_text("x")
    assert cli("train", config, "--run-dir", file, "-q") == 2
    assert capsys.readouterr().err == f"error: --run-dir {file}: is a file, not a directory\n"
    done = tmp_path / "done"
    assert cli("train", config, "--run-dir", done, "-q") == 0
    capsys.readouterr()
    assert cli("train", config, "--run-dir", done, "-q") == 2  # (was: "use --resume", then "nothing to resume")
    assert capsys.readouterr().err == (f"error: {done}: run directory exists and is not empty "
                                       "(it holds a completed training run; choose another --run-dir)\n")
    (done / "run.json").write_text((done / "run.json").read_text().replace('"completed"', '"interrupted"'))
    assert cli("train", config, "--run-dir", done, "-q") == 2
    assert "(use --resume to continue it)" in capsys.readouterr().err
    assert cli("range-test", config, "--run-dir", done, "-q") == 2  # range-test has no --resume
    assert capsys.readouterr().err == (f"error: {done}: run directory exists and is not empty "
                                       "(choose another --run-dir, or remove it; a range test cannot be resumed)\n")


# -- an offline download: the real reason, nothing left behind --------------------------------------


def test_an_offline_download_gives_the_reason_and_leaves_nothing_behind(cli, tmp_path, monkeypatch, capsys):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known (offline)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root = tmp_path / "data"
    (root / "other").mkdir(parents=True)  # a data root that holds something else already
    config = CONFIGS / "mnist-lenet-one_cycle.yaml"
    assert cli("validate", config, "dataset.download=true", f"dataset.root={root}") == 2
    err = capsys.readouterr().err
    assert err == (f"error: dataset.download: could not fetch MNIST into '{root}': Error downloading "
                   "train-images-idx3-ubyte.gz: <urlopen error Name or service not known (offline)>\n")
    assert sorted(p.name for p in root.iterdir()) == ["other"]  # (was: MNIST/raw left behind)
    fresh = tmp_path / "fresh"
    assert cli("validate", config, "dataset.download=true", f"dataset.root={fresh}") == 2
    assert not fresh.exists()


# -- the range-test plot: loss minimum marked, nothing over the curves or the title --------------------


def test_range_test_plot_marks_the_loss_minimum_and_keeps_legends_and_markers_clear(cli, tiny_config, tmp_path,
                                                                                  monkeypatch):
    from clrctl.plots import range_test as rt_plots

    drawn = []
    real_save = rt_plots.save
    monkeypatch.setattr(rt_plots, "save", lambda fig, path: (drawn.append(fig), real_save(fig, path)))
    run = tmp_path / "rt"
    assert cli("range-test", tiny_config(name="tiny-range-test"), "--run-dir", run, "-q", "range_test.steps=60",
               "range_test.eval_every=5", "range_test.end_lr=2") == 0
    fig = drawn[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    loss_min = strict_json(run / "summary.json")["suggestion"]["candidates"]["loss_min"]["lr"]
    ax_loss = fig.axes[0]
    labels = ax_loss.get_legend_handles_labels()[1]
    assert f"loss minimum: {loss_min:.3g}" in labels
    for ax in fig.axes:  # legends right of the axes, not over the curves
        assert ax.get_legend().get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
    title = ax_loss.title.get_window_extent(renderer)
    for line in ax_loss.lines:
        if line.get_marker() not in ("None", None, "") and line.get_label().split(":")[0] in (
                "loss minimum", "steepest", "valley", "min_loss/10"):
            box = line.get_window_extent(renderer)
            assert box.y1 <= ax_loss.get_window_extent(renderer).y1 and not box.overlaps(title)


def test_a_diverged_runs_summary_comes_from_the_evaluations_in_metrics_csv(cli, tiny_config, tmp_path):
    """Evaluations between the diverged step and the sync that saw it are not in metrics.csv;
    the summary's final and best numbers must not come from them either."""
    import csv

    run = tmp_path / "run"
    config = tiny_config(dataset={"name": "digits", "batch_size": 32}, model={"name": "mlp", "hidden": [64, 64]},
                         policy={"name": "triangular2", "bounds": [10, 1000], "stepsize": 86},
                         train={"epochs": 2, "eval_every": 1, "log_every": 25})  # NaN at step 43, seen at 50
    assert cli("train", config, "--run-dir", run, "-q") == 1
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.csv", newline="") as handle:
        evals = [row for row in csv.DictReader(handle) if row["val_loss"]]
    assert summary["steps"] == summary["diverged_at"]["step"] + 1
    last = evals[-1] if evals else None
    assert summary["final_val_acc"] == (float(last["val_acc"]) if last else None)
    best = max(evals, key=lambda row: float(row["val_acc"])) if evals else None
    assert summary["best_val_acc"] == (float(best["val_acc"]) if best else None)
    assert summary["best_step"] is None or summary["best_step"] <= summary["steps"]
