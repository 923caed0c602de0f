"""``clrctl compare SWEEP_DIR``: one row per point of a sweep, ranked (torch-free).

A point's value is the **median over its completed seeds** of the metric (``--metric``,
default ``final_val_acc``), with its spread (min–max, quartiles); the points are ranked by it
in the metric's direction (competition ranking: ties share a rank). ``steps_to_target`` is
censored as in a normal compare: a seed that never reached the target counts as ``inf`` (shown
``>N``), so a point whose median seed never got there ranks after every point that did.
Runs that diverged, failed or have not finished are counted in the point's status and left
out of its statistics; a point without a completed run has no rank.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from clrctl.compare import render, stats
from clrctl.compare.metrics import HIGHER, TRAIN_METRICS, Target, shared_budget, target_from_run, train_scalars
from clrctl.compare.runs import Run, load_run
from clrctl.errors import InputError
from clrctl.runs.rundir import read_json

SCHEMA_VERSION = 1
SHOWN = ("final_val_acc", "steps_to_target")  # always in the table, next to --metric


def is_sweep(path: str | Path) -> bool:
    return (Path(path) / "sweep.json").is_file()


def build_sweep_report(path: str | Path, metric: str, target: Optional[Target]) -> dict[str, Any]:
    """The ranked report of the sweep in ``path`` (plain data, the same for every format)."""
    path = Path(path)
    index = read_json(path / "sweep.json")
    if index.get("kind") != "sweep" or not isinstance(index.get("points"), list):
        raise InputError(f"{path}/sweep.json: not a clrctl sweep index")
    loaded = [(point, _load_runs(path, point)) for point in index["points"]]
    finished = [run for _, runs in loaded for run in runs]
    if not any(run.status == "completed" for run in finished):
        raise InputError(f"{path}: no completed run yet (run the sweep, or wait for it)")
    target = target or next((t for t in map(target_from_run, finished) if t is not None), None)
    if metric == "steps_to_target" and target is None:
        raise InputError("--metric steps_to_target needs --target (e.g. val_acc=0.97): the runs record none")
    shown = [metric] + [m for m in SHOWN if m != metric and (m != "steps_to_target" or target is not None)]
    budget = shared_budget(finished)
    rows = [_row(point, runs, shown, target, budget) for point, runs in loaded]
    _rank(rows, metric)
    return {
        "schema_version": SCHEMA_VERSION, "kind": "sweep", "sweep": str(path), "name": index.get("name"),
        "metric": {"name": metric, "title": TRAIN_METRICS[metric].title,
                   "direction": "higher" if TRAIN_METRICS[metric].direction == HIGHER else "lower",
                   "unit": TRAIN_METRICS[metric].unit},
        "shown": shown, "target": None if target is None else {"metric": target.metric, "value": target.value},
        "keys": varying_keys(index), "grid": index.get("grid", {}),
        "points": sorted(rows, key=lambda r: (r["rank"] is None, r["rank"] or 0)),
        **({"search": search_section(index)} if index.get("search") else {}),
    }


def search_section(index: dict[str, Any]) -> dict[str, Any]:
    """A search's trials in order (number, status, value: the study's metric; a pruned trial's
    value is the one it was pruned at), its best, and each parameter's importance: the share of
    the completed trials' variance of the metric that the parameter explains — Spearman's rho²
    for a numeric range, the between-groups share (eta²) for a choice. A plain, model-free
    substitute for Optuna's fANOVA (which needs scikit-learn); ``None`` below 3 completed trials."""
    search = index["search"]
    trials = [{"trial": p.get("trial"), "status": p.get("status"), "path": p.get("path"),
               "value": p.get("value") if p.get("status") == "completed" else p.get("last_value"),
               "overrides": p.get("overrides") or {}} for p in index["points"]]
    trials.sort(key=lambda t: t["trial"] if t["trial"] is not None else -1)
    done = [t for t in trials if t["status"] == "completed" and t["value"] is not None]
    importance = {}
    for param in search.get("params", []):
        pairs = [(t["overrides"].get(param["key"]), t["value"]) for t in done if param["key"] in t["overrides"]]
        importance[param["key"]] = _explained(pairs, param["kind"] == "choice") if len(pairs) >= 3 else None
    ranked = sorted((k for k, v in importance.items() if v is not None), key=lambda k: -importance[k])
    return {"sampler": search.get("sampler"), "metric": search.get("metric"), "prune": search.get("prune"),
            "params": search.get("params", []), "trials": trials, "best": index.get("best"),
            "importance": importance, "most_important": ranked[0] if ranked else None,
            "importance_rule": "share of the completed trials' metric variance explained: Spearman rho^2 "
                               "(ranges), eta^2 (choices)"}


def _explained(pairs: list[tuple[Any, float]], categorical: bool) -> float:
    y = np.array([v for _, v in pairs], dtype=float)
    if np.ptp(y) == 0:
        return 0.0
    if categorical:
        groups: dict[str, list[float]] = {}
        for x, v in pairs:
            groups.setdefault(json.dumps(x, sort_keys=True), []).append(v)
        between = sum(len(g) * (np.mean(g) - y.mean()) ** 2 for g in groups.values())
        return float(between / (((y - y.mean()) ** 2).sum()))
    x = np.array([float(x) for x, _ in pairs])
    if np.ptp(x) == 0:
        return 0.0
    rx, ry = _ranks(x), _ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1] ** 2)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share theirs), as Spearman's rho uses them."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def varying_keys(index: dict[str, Any]) -> list[str]:
    """The grid keys that take more than one value (the axes of the plot)."""
    return [key for key, values in (index.get("grid") or {}).items() if len(values) > 1]


def _load_runs(path: Path, point: dict[str, Any]) -> list[Run]:
    runs = []
    for entry in point.get("runs", []):
        run_dir = path / entry["path"]
        info = run_dir / "run.json"
        if info.is_file() and read_json(info).get("status") not in (None, "running"):
            runs.append(load_run(run_dir))
    return runs


def _row(point: dict[str, Any], runs: list[Run], shown: list[str], target, budget: float) -> dict[str, Any]:
    done = [run for run in runs if run.status == "completed"]
    values = {name: np.array([train_scalars(run, target, budget)[name] for run in done], dtype=float)
              for name in shown}
    metrics = {}
    for name in shown:
        entry = stats.summarize(values[name])
        if name == "steps_to_target":
            steps = np.array([train_scalars(run, target, budget)["steps"] for run in done], dtype=float)
            censored = np.isposinf(values[name])
            entry["censored"] = int(censored.sum())
            entry["censored_at"] = float(np.nanmax(steps[censored])) if censored.any() else None
        metrics[name] = entry
    statuses = [r["status"] for r in point.get("runs", [])]
    return {
        "name": point["name"], "overrides": point.get("overrides", {}), "included": point.get("included", False),
        "path": point.get("path"), "seeds": point.get("seeds", []), "n": len(statuses),
        "completed": len(done), "statuses": {s: statuses.count(s) for s in dict.fromkeys(statuses)},
        "metrics": metrics, "per_seed": {name: {str(run.seed): float(values[name][i]) for i, run in enumerate(done)}
                                         for name in shown},
        "rank": None,
    }


def _rank(rows: list[dict[str, Any]], metric: str) -> None:
    """Competition ranking (1, 2, 2, 4) by the median, best first; NaN medians get no rank."""
    direction = TRAIN_METRICS[metric].direction
    scored = [(row["metrics"][metric]["median"], row) for row in rows if row["completed"]]
    scored = [(value, row) for value, row in scored if not math.isnan(value)]
    scored.sort(key=lambda item: -direction * item[0])  # a censored (inf) steps_to_target sorts last
    for i, (value, row) in enumerate(scored):
        previous = scored[i - 1] if i else None
        row["rank"] = previous[1]["rank"] if previous is not None and previous[0] == value else i + 1


# ---------------------------------------------------------------------------------------
# Rendering


def columns(report: dict[str, Any]) -> list[str]:
    """The override keys to show: those that differ between points (grid keys, include keys)."""
    keys = list(dict.fromkeys(k for row in report["points"] for k in row["overrides"]))
    return [k for k in keys if len({_cell(row, k) for row in report["points"]}) > 1
            and any(row["overrides"].get(k) is not None for row in report["points"])]  # not just "unset"


def _cell(row: dict[str, Any], key: str) -> str:
    return render.fmt_config_value(row["overrides"][key]) if key in row["overrides"] else ""


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    keys = columns(report)
    metric_cols = [TRAIN_METRICS[m].title + (" ↑" if TRAIN_METRICS[m].direction == HIGHER else " ↓")
                   for m in report["shown"]]
    header = ["rank", *(keys or ["point"]), *metric_cols, "runs"]
    rows = []
    for row in report["points"]:
        cells = ["—" if row["rank"] is None else str(row["rank"])]
        cells += [_cell(row, k) for k in keys] if keys else [row["name"]]
        cells += [render.fmt_side(row["metrics"][m], TRAIN_METRICS[m].unit) for m in report["shown"]]
        cells.append(_runs_cell(row))
        rows.append(cells)
    return header, rows


def _runs_cell(row: dict[str, Any]) -> str:
    if row["completed"] == row["n"]:
        return f"{row['n']} completed"
    others = ", ".join(f"{n} {s}" for s, n in row["statuses"].items() if s != "completed")
    return f"{row['completed']}/{row['n']} completed ({others})"


def headline(report: dict[str, Any]) -> str:
    metric = report["metric"]
    target = report["target"]
    what = metric["title"] + (f" (target {target['metric']}={target['value']:g})" if target else "")
    return (f"sweep {report['name']}: {len(report['points'])} points ranked by {what}, {metric['direction']} "
            f"is better; values are the median [min–max] over seeds; {best_text(report)}")


def best_text(report: dict[str, Any]) -> str:
    """``best: NAME``, ``tie for best: A, B`` (same median), or ``no point ranked``."""
    best = [row["name"] for row in report["points"] if row["rank"] == 1]
    if not best:
        return "no point ranked (none completed with a value)"
    return f"best: {best[0]}" if len(best) == 1 else f"tie for best ({len(best)} points): {', '.join(best)}"


def renderable(report: dict[str, Any], width: Optional[int]) -> Any:
    """The ranking for a terminal of ``width`` columns: a table whose cells are never cut
    (no_wrap), or, when it does not fit, one block per point (name, then ``column  value``)."""
    header, rows = table_rows(report)
    title = render._prose(headline(report), width, style="bold")
    table = _table(header, rows, report)
    if width is None or render._width_of(table) <= width:
        return Group(title, table)
    named = [[f"rank {cells[0]}: {row['name']}" if row["rank"] is not None else f"unranked: {row['name']}",
              *cells[1:]] for cells, row in zip(rows, report["points"])]
    return Group(title, render._vertical(["point", *header[1:]], named, None, "row", width))


def _table(header: list[str], rows: list[list[str]], report: dict[str, Any]) -> Table:
    table = Table()
    right = len(header) - len(report["shown"]) - 1
    for i, col in enumerate(header):
        table.add_column(Text(col), justify="right" if i == 0 or i >= right else "left", no_wrap=True)
    for cells, row in zip(rows, report["points"]):
        table.add_row(*map(Text, cells), style="bold" if row["rank"] == 1 else None)
    return table


def to_text(report: dict[str, Any]) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=200, no_color=True, force_terminal=False).print(renderable(report, 200), crop=False)
    return buffer.getvalue()


def to_markdown(report: dict[str, Any], plot: Optional[str] = None) -> str:
    header, rows = table_rows(report)
    esc = lambda cell: str(cell).replace("|", "\\|")  # noqa: E731
    lines = [f"**{esc(headline(report))}**", "",
             "| " + " | ".join(map(esc, header)) + " |",
             "| " + " | ".join("---:" if i == 0 or i >= len(header) - len(report["shown"]) - 1 else "---"
                               for i in range(len(header))) + " |"]
    lines += ["| " + " | ".join(map(esc, cells)) + " |" for cells in rows]
    if plot:
        lines += ["", f"![sweep]({plot})"]
    return "\n".join(lines) + "\n"


def to_json(report: dict[str, Any]) -> str:
    return render.to_json(report)
