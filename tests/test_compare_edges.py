"""`clrctl compare` edge cases from issue 12: not-comparable runs under the gate, multi-seed
range tests, literal (bracketed) text, narrow terminals, censored steps-to-target, the plot's
title and target label, the config diff's ignored sections, and `--plot`'s "wrote" line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_compare_support import _write_csv, _write_json, base_config, make_group, make_range_test, make_run

INF_OR_NAN = re.compile(r"∞|\binf\b|\bnan\b|Infinity|NaN", re.IGNORECASE)


def _json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def width(monkeypatch):
    """Render compare for a terminal this wide (a console like the app's, writing to stdout)."""
    from rich.console import Console

    from clrctl.commands import compare as command

    def set_width(columns: int) -> None:
        monkeypatch.setattr(command, "console", Console(width=columns))

    return set_width


# -- 3: not comparable is reported, not failed --------------------------------------------------------
def test_gate_reports_a_not_comparable_candidate_and_exits_0(cli, tmp_path, capsys):
    base = make_run(tmp_path / "digits", {99: 0.97})
    other = make_run(tmp_path / "folder", {99: 0.60}, config=base_config(dataset__name="imagefolder"))
    assert cli("compare", base, other, "--gate", "--format", "json") == 0
    report = _json(capsys.readouterr().out)
    assert report["verdict"] == "incomparable"
    assert report["gate"]["result"] == "incomparable" and report["gate"]["candidates"] == {"folder": "incomparable"}
    assert cli("compare", base, other, "--gate", "--strict") == 0
    out = capsys.readouterr()
    assert "not comparable" in out.out and "regression" not in out.out + out.err


def test_gate_still_fails_a_comparable_regression_next_to_a_not_comparable_one(cli, tmp_path, capsys):
    base = make_run(tmp_path / "base", {99: 0.97})
    worse = make_run(tmp_path / "worse", {99: 0.90})
    other = make_run(tmp_path / "other", {99: 0.99}, config=base_config(model__name="lenet"))
    assert cli("compare", base, worse, other, "--gate", "--format", "json") == 1
    report = _json(capsys.readouterr().out)
    assert report["gate"]["candidates"] == {"worse": "worse", "other": "incomparable"}
    assert report["verdict"] == "regression"


# -- 4: a multi-seed range test -------------------------------------------------------------------------
def make_multi_seed_range_test(path: Path, seeds: list[int], max_lrs: list[float], min_at: list[int]) -> Path:
    """What `clrctl range-test CFG --seeds N` writes: a top-level summary with the median
    suggestion and its spread, and seeds/seed-K/{metrics.csv,summary.json}; no metrics.csv."""
    lrs = [1e-4 * 10 ** (i / 10) for i in range(41)]
    per_seed = []
    for seed, max_lr, low in zip(seeds, max_lrs, min_at):
        where = path / "seeds" / f"seed-{seed}"
        where.mkdir(parents=True)
        losses = [2.3 - 0.04 * i if i <= low else 2.3 - 0.04 * low + 0.3 * (i - low) for i in range(41)]
        _write_csv(where / "metrics.csv", ["step", "epoch", "lr", "momentum", "loss", "smoothed_loss", "val_loss", "val_acc"],
                   [{"step": i, "epoch": 0, "lr": lr, "momentum": 0.9, "loss": loss, "smoothed_loss": loss,
                     "val_loss": "", "val_acc": ""} for i, (lr, loss) in enumerate(zip(lrs, losses))])
        _write_json(where / "summary.json", {"status": "completed", "steps": 41,
                                             "suggestion": {"base_lr": max_lr / 4, "max_lr": max_lr}})
        per_seed.append({"seed": seed, "base_lr": max_lr / 4, "max_lr": max_lr, "steps": 41,
                         "path": f"seeds/seed-{seed}"})
    median = float(np.median(max_lrs))
    spread = float(np.log10(max(max_lrs) / min(max_lrs)))
    _write_json(path / "run.json", {"kind": "range-test", "status": "completed", "seed": seeds[0]})
    config = base_config(name="rt3")
    config["range_test"] = {"start_lr": lrs[0], "end_lr": lrs[-1], "mode": "exp"}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    _write_json(path / "summary.json", {
        "status": "completed", "steps": 41 * len(seeds), "seeds": seeds, "per_seed": per_seed,
        "suggestion": {"base_lr": median / 4, "max_lr": median,
                       "spread_decades": {"base_lr": spread, "max_lr": spread}, "warnings": []},
    })
    return path


def test_multi_seed_range_test_compares_by_median_suggestion_and_spread(cli, tmp_path, capsys):
    lrs = [1e-4 * 10 ** (i / 10) for i in range(41)]
    single = make_range_test(tmp_path / "rt1", lrs, [2.3 - 0.04 * i if i < 30 else 1.1 + 0.3 * (i - 30) for i in range(41)],
                             {"base_lr": 0.025, "max_lr": 0.1}, mode="exp")
    multi = make_multi_seed_range_test(tmp_path / "rt3", [0, 1, 2], [0.1, 0.2, 1.0], [20, 30, 40])
    plot = tmp_path / "rt.png"
    assert cli("compare", single, multi, "--format", "json", "--plot", plot) == 0
    report = _json(capsys.readouterr().out)
    values = report["runs"][1]["metrics"]
    assert values["max_lr"]["median"] == 0.2 and values["base_lr"]["median"] == 0.05
    assert values["max_lr_spread"]["median"] == pytest.approx(1.0)  # log10(1.0 / 0.1)
    assert values["sweep_seeds"]["median"] == 3 and values["steps"]["median"] == 41
    # the median seed's minimum, by the range test's rule (its smoothed kink sits one step early)
    assert values["lr_at_min_loss"]["median"] == pytest.approx(1e-4 * 10 ** 2.9)
    assert report["comparisons"][0]["max_lr_shift_decades"] == pytest.approx(np.log10(2))
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_multi_seed_range_test_overlay_draws_each_seed(tmp_path):
    from clrctl.compare import curves
    from clrctl.compare.runs import load_side

    multi = make_multi_seed_range_test(tmp_path / "rt3", [0, 1, 2], [0.1, 0.2, 1.0], [20, 30, 40])
    drawn = curves.range_curves(load_side(str(multi)))
    assert [c.label for c in drawn] == ["rt3 seed 0", "rt3 seed 1", "rt3 seed 2"]
    assert [int(np.argmin(c.panels["loss_vs_lr"].y)) for c in drawn] == [20, 30, 40]


def test_multi_seed_range_test_with_a_missing_seed_exits_2(cli, tmp_path, capsys):
    multi = make_multi_seed_range_test(tmp_path / "rt3", [0, 1], [0.1, 0.2], [20, 30])
    (multi / "seeds" / "seed-1" / "metrics.csv").unlink()
    assert cli("compare", multi, multi) == 2
    assert "seed-1: unreadable range-test seed (no metrics.csv)" in capsys.readouterr().err


@pytest.mark.slow
def test_real_multi_seed_range_test_compares(cli, tiny_config, tmp_path, capsys):
    cfg = tiny_config("rt", range_test={"start_lr": 0.001, "end_lr": 1.0, "steps": 30, "eval_every": 10})
    assert cli("range-test", cfg, "--seeds", "2", "--run-dir", tmp_path / "rt2", "-q") == 0
    assert cli("range-test", cfg, "--run-dir", tmp_path / "rt1", "-q") == 0
    capsys.readouterr()
    assert cli("compare", tmp_path / "rt1", tmp_path / "rt2", "--format", "json", "--plot", tmp_path / "p.png") == 0
    report = _json(capsys.readouterr().out)
    summary = json.loads((tmp_path / "rt2" / "summary.json").read_text())
    assert report["runs"][1]["metrics"]["max_lr"]["median"] == pytest.approx(summary["suggestion"]["max_lr"])
    assert report["runs"][1]["metrics"]["sweep_seeds"]["median"] == 2


# -- 5: text in square brackets prints literally ------------------------------------------------------
def test_names_paths_and_config_values_with_brackets_print_literally(cli, tmp_path, capsys):
    base = make_run(tmp_path / "base[v1]", {99: 0.97}, config=base_config(dataset__root="data/[v1]"))
    cand = make_run(tmp_path / "cand[lr=0.1]", {99: 0.96},
                    config=base_config(dataset__root="data/[v2]", policy__name="[bold]x"))
    assert cli("compare", base, cand) == 0
    out = capsys.readouterr().out
    for literal in ("base[v1]", "cand[lr=0.1]", "data/[v1]", "data/[v2]", "[bold]x", "against base[v1]"):
        assert literal in out, literal
    report = tmp_path / "out[x]" / "r.md"
    plot = tmp_path / "out[x]" / "p[1].png"
    assert cli("compare", base, cand, "--output", report, "--plot", plot) == 0
    captured = capsys.readouterr()
    assert "against base[v1]" in captured.out
    assert f"wrote {report}" in captured.err and f"wrote {plot}" in captured.err


def test_group_cis_with_brackets_print_literally(cli, tmp_path, capsys):
    base = make_group(tmp_path / "b", {s: {99: 0.97} for s in range(3)})
    cand = make_group(tmp_path / "c", {s: {99: acc} for s, acc in enumerate([0.94, 0.945, 0.95])})
    assert cli("compare", base, cand, "--tolerance", "0.01") == 0
    assert "[-0.0300, -0.0200]" in capsys.readouterr().out


# -- 11: never split a run name or a CI -----------------------------------------------------------------
@pytest.mark.parametrize("columns", [80, 60])
def test_names_and_cis_stay_whole_on_narrow_terminals(cli, tmp_path, capsys, width, columns):
    from clrctl.compare.render import fmt_ci

    base = make_group(tmp_path / "digits-fixed-20261122-101500", {s: {19: 0.9, 99: 0.96 + 0.001 * s} for s in range(3)})
    cand = make_group(tmp_path / "digits-triangular2-20261122-101501",
                      {s: {19: 0.95, 29: 0.97, 99: 0.975 + 0.002 * s} for s in range(3)},
                      config=base_config(policy__name="triangular2", policy__bounds=[0.01, 0.1], policy__lr=None))
    args = (base, cand, "--target", "val_acc=0.97")
    assert cli("compare", *args, "--format", "json") == 0
    report = _json(capsys.readouterr().out)
    cis = [fmt_ci(entry, report["metrics"][name]["unit"])
           for name, entry in report["comparisons"][0]["metrics"].items() if entry["ci_low"] is not None]
    assert "[+0.0150, +0.0170]" in cis
    width(columns)
    assert cli("compare", *args) == 0
    lines = capsys.readouterr().out.splitlines()
    for whole in [base.name, cand.name, "[0.01, 0.1]", *cis]:
        assert any(whole in line for line in lines), (whole, columns)
    assert max(len(line) for line in lines) <= columns


# -- 12: a target never reached is a bound, never an infinity -----------------------------------------
def _censored_baseline(tmp_path):
    base = make_run(tmp_path / "base", {49: 0.90, 99: 0.95}, steps=100)  # never reaches 0.97 in 100 steps
    cand = make_run(tmp_path / "cand", {24: 0.97, 99: 0.98}, steps=100)  # reaches it at 25
    return base, cand


def test_censored_baseline_json_has_bounds_and_no_infinities(cli, tmp_path, capsys):
    args = (*_censored_baseline(tmp_path), "--target", "val_acc=0.97")
    assert cli("compare", *args, "--format", "json") == 0
    text = capsys.readouterr().out
    assert not INF_OR_NAN.search(text)
    comp = _json(text)["comparisons"][0]
    entry = comp["metrics"]["steps_to_target"]
    assert entry["old"] is None and entry["new"] == 25 and entry["diff"] is None
    assert entry["censored"] == "baseline" and entry["reached"] == {"baseline": False, "candidate": True}
    assert entry["diff_bound"] == {"op": "<", "value": -75}
    assert entry["tolerance_abs"] == 5 and entry["verdict"] == "better"  # 5% of the bound (100)
    assert comp["speedup"] == {"value": 4.0, "bound": ">", "ci_low": None, "ci_high": None, "censored": "baseline"}


def test_censored_baseline_table_and_markdown_show_not_reached(cli, tmp_path, capsys, width):
    args = (*_censored_baseline(tmp_path), "--target", "val_acc=0.97")
    width(120)
    assert cli("compare", *args) == 0
    table = capsys.readouterr().out
    assert cli("compare", *args, "--format", "markdown") == 0
    markdown = capsys.readouterr().out
    assert "| steps to target | ↓ | not reached (>100) | 25 |" in markdown
    assert "| steps to target | < -75 | — | ±5 | better |" in markdown
    for text in (table, markdown):
        assert not INF_OR_NAN.search(text), text
        assert "not reached (>100)" in text and "< -75" in text and ">4.00×" in text
        assert "the baseline never reached the target" in text


def test_censored_group_ci_is_a_bound_not_infinite(cli, tmp_path, capsys):
    base = make_group(tmp_path / "base", {s: {99: 0.95} for s in range(3)})  # no seed reaches 0.97
    cand = make_group(tmp_path / "cand", {s: {19 + 10 * s: 0.97} for s in range(3)})  # 20, 30, 40
    for fmt in ("table", "markdown", "json"):
        assert cli("compare", base, cand, "--target", "val_acc=0.97", "--format", fmt) == 0
        text = capsys.readouterr().out
        assert not INF_OR_NAN.search(text), (fmt, text)
        if fmt != "json":
            assert "< -70" in text  # 30 - 100, paired by seed
    report = _json(text)
    entry = report["comparisons"][0]["metrics"]["steps_to_target"]
    assert entry["ci_low"] is None and entry["ci_high"] is None and entry["censored"] == "baseline"


def test_neither_reached_shows_no_difference(cli, tmp_path, capsys):
    base = make_run(tmp_path / "base", {99: 0.90})
    cand = make_run(tmp_path / "cand", {99: 0.91})
    assert cli("compare", base, cand, "--target", "val_acc=0.97") == 0
    out = capsys.readouterr().out
    assert "neither reached" in out and not INF_OR_NAN.search(out)


# -- 14: the plot's title and target label; the config diff; --plot's "wrote" ------------------------
def test_train_overlay_has_a_title_and_a_labelled_target_line(tmp_path):
    from clrctl.commands.compare import plot_title
    from clrctl.compare import curves
    from clrctl.compare.metrics import Target
    from clrctl.compare.report import Options, build_report
    from clrctl.compare.runs import load_side
    from clrctl.plots.compare import train_overlay_figure

    sides = [load_side(str(p)) for p in _censored_baseline(tmp_path)]
    report = build_report(sides, 0, Options(target=Target("val_acc", 0.97)))
    fig = train_overlay_figure([curves.train_curves(s) for s in sides], ("val_acc", 0.97), plot_title(report))
    assert fig._suptitle.get_text() == "clrctl compare, cand vs base (target val_acc=0.97)"
    acc_legend = fig.axes[1].get_legend()
    assert acc_legend is not None and [t.get_text() for t in acc_legend.get_texts()] == ["target val_acc=0.97"]


def test_range_overlay_has_a_title(tmp_path):
    from clrctl.plots.compare import range_overlay_figure
    from clrctl.compare import curves
    from clrctl.compare.runs import load_side

    multi = make_multi_seed_range_test(tmp_path / "rt3", [0, 1], [0.1, 0.2], [20, 30])
    fig = range_overlay_figure(curves.range_curves(load_side(str(multi))), True, "clrctl compare, range tests: a vs b")
    assert fig.axes[0].get_title() == "clrctl compare, range tests: a vs b"


def test_config_diff_ignores_sections_the_run_kind_never_reads(cli, tmp_path, capsys):
    base = make_run(tmp_path / "base", {99: 0.97}, config=base_config(range_test__end_lr=1.0))
    cand = make_run(tmp_path / "cand", {99: 0.97}, config=base_config(range_test__end_lr=10.0, policy__lr=0.02))
    assert cli("compare", base, cand, "--format", "json") == 0
    diff = _json(capsys.readouterr().out)["comparisons"][0]["config_diff"]
    assert [d["key"] for d in diff] == ["policy.lr"]

    from clrctl.compare.report import config_diff

    a = {**base_config(), "range_test": {"end_lr": 1.0}}
    b = {**base_config(policy__name="triangular2", train__epochs=9), "range_test": {"end_lr": 10.0}}
    assert [d["key"] for d in config_diff(a, b, "range-test")] == ["range_test.end_lr"]


def test_plot_says_where_it_wrote(cli, tmp_path, capsys):
    base, cand = _censored_baseline(tmp_path)
    plot = tmp_path / "plots" / "compare.png"
    assert cli("compare", base, cand, "--format", "json", "--plot", plot) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == f"wrote {plot}"
    _json(captured.out)  # stdout is the report alone
