"""The ``compare SWEEP_DIR --plot`` figure, drawn from the sweep report (nothing computed here).

Two grid keys vary: a heatmap of the metric's median over seeds (each cell also gives the
seeds' count and min–max; the colour range spans at least :data:`MIN_COLOR_SPAN`, so that a
small difference does not look maximal). One key varies: the median against that key's values with the seeds' min–max
as a band and each seed as a dot. Otherwise: every point's median and range, best first.
Extra points (``sweep.include``, e.g. a fixed-LR baseline) are drawn as reference lines or
listed under the heatmap. A search (``--search``): its optimisation history (the metric per
trial and the best so far) beside the metric against its most important parameter; pruned
trials are drawn as crosses at the value they were pruned at.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps

from clrctl.plots._style import DPI, new_figure, save


def plot_sweep(report: dict[str, Any], path: str | Path) -> Path:
    fig = sweep_figure(report)
    if getattr(fig, "clrctl_no_grid", False):
        fig.savefig(path, dpi=DPI)  # a heatmap: no grid lines across its cells
    else:
        save(fig, path)
    return Path(path)


def sweep_figure(report: dict[str, Any]):
    """The figure of :func:`plot_sweep` (not saved, so that tests can inspect it)."""
    if report.get("search"):
        return search_figure(report)
    keys = report["keys"]
    grid_rows = [row for row in report["points"] if not row["included"]]
    if not any(math.isfinite(_finite(row["metrics"][report["metric"]["name"]]["median"])) for row in report["points"]):
        return _nothing(report)
    if len(keys) == 2 and grid_rows:
        return heatmap_figure(report, grid_rows, keys)
    if len(keys) == 1 and grid_rows:
        return _lines(report, grid_rows, keys[0])
    return _ranked(report)


def _nothing(report: dict[str, Any]):
    """No point has a value to draw (none reached the target): say so, not a made-up scale."""
    fig, ax = new_figure()
    what = ("no point reached the target" if report["metric"]["name"] == "steps_to_target"
            else f"no point has a {report['metric']['title']}")
    ax.text(0.5, 0.5, what, ha="center", va="center", fontsize=12, transform=ax.transAxes)
    ax.set_axis_off()
    ax.set_title(_title(report), fontsize=9)
    fig.clrctl_no_grid = True
    return fig


# The smallest colour range of a heatmap, per unit: a smaller spread of medians is drawn in the
# middle of this range, so that a one-point difference does not span the whole scale.
MIN_COLOR_SPAN = {"acc": 0.05, "loss": 0.1, "steps": 0.2, "count": 0.2, "seconds": 0.2}  # relative for the last 3


def color_limits(values: np.ndarray, unit: str) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    low, high = float(finite.min()), float(finite.max())
    span = MIN_COLOR_SPAN.get(unit, 0.0)
    if unit not in ("acc",):
        span *= max(abs(low), abs(high))
    if high - low >= span:
        return low, high
    middle = (low + high) / 2
    low, high = middle - span / 2, middle + span / 2
    if unit == "acc" and high > 1.0:  # keep the range within [0, 1]
        low, high = low - (high - 1.0), 1.0
    return low, high


def _fmt(entry: dict[str, Any], unit: str) -> str:
    value = entry["median"]
    if value is None or math.isnan(value):
        return "—"
    if math.isinf(value):
        return f">{entry.get('censored_at') or 0:.0f}"
    return f"{value:.3f}" if unit in ("acc", "loss") else f"{value:.0f}" if unit in ("steps", "count") else f"{value:.3g}"


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _title(report: dict[str, Any]) -> str:
    metric, target = report["metric"], report["target"]
    what = (f"steps to {target['metric']} {target['value']:g}" if target and metric["name"] == "steps_to_target"
            else metric["title"])
    return f"{report['name']}: median {what} over seeds ({metric['direction']} is better)"


def heatmap_figure(report, rows, keys):
    """Median over seeds per cell, with the seeds' count and min–max written in the cell."""
    metric = report["metric"]
    ys, xs = report["grid"][keys[0]], report["grid"][keys[1]]
    values = np.full((len(ys), len(xs)), np.nan)
    labels = [["" for _ in xs] for _ in ys]
    for row in rows:
        try:
            i = [_key(v) for v in ys].index(_key(row["overrides"].get(keys[0])))
            j = [_key(v) for v in xs].index(_key(row["overrides"].get(keys[1])))
        except ValueError:
            continue
        entry = row["metrics"][metric["name"]]
        values[i, j] = entry["median"]
        spread = "" if entry["n"] < 2 else f"\nn={entry['n']} [{_fmt({**entry, 'median': entry['min']}, metric['unit'])}–" \
                                           f"{_fmt({**entry, 'median': entry['max']}, metric['unit'])}]"
        labels[i][j] = _fmt(entry, metric["unit"]) + spread
    shown = np.ma.masked_invalid(values)
    fig, ax = new_figure(figsize=(1.8 * len(xs) + 3.0, 1.0 * len(ys) + 2.2))
    cmap = colormaps["viridis" if metric["direction"] == "higher" else "viridis_r"].with_extremes(bad="lightgray")
    vmin, vmax = color_limits(values, metric["unit"])
    image = ax.imshow(shown, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    for i in range(len(ys)):
        for j in range(len(xs)):
            ax.text(j, i, labels[i][j] or "—", ha="center", va="center", fontsize=8,
                    color="white" if _dark(image, values[i, j]) else "black")
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_yticks(range(len(ys)), [str(y) for y in ys])
    ax.set_xlabel(keys[1])
    ax.set_ylabel(keys[0])
    ax.grid(False)
    fig.colorbar(image, ax=ax, label=metric["title"] + " (median over seeds)")
    extras = [f"{row['name']}: {_fmt(row['metrics'][metric['name']], metric['unit'])}"
              for row in report["points"] if row["included"]]
    ax.set_title(_title(report) + ("\n" + "; ".join(extras) if extras else ""), fontsize=9)
    fig.clrctl_no_grid = True
    return fig


def _dark(image, value: float) -> bool:
    if not math.isfinite(value):
        return False
    r, g, b, _ = image.cmap(image.norm(value))
    return 0.299 * r + 0.587 * g + 0.114 * b < 0.5


def _lines(report, rows, key):
    metric = report["metric"]["name"]
    values = report["grid"][key]
    order = {_key(v): i for i, v in enumerate(values)}
    rows = sorted((r for r in rows if _key(r["overrides"].get(key)) in order),
                  key=lambda r: order[_key(r["overrides"].get(key))])
    fig, ax = new_figure()
    x = np.array([order[_key(r["overrides"].get(key))] for r in rows], dtype=float)
    med = np.array([_finite(r["metrics"][metric]["median"]) for r in rows])
    low = np.array([_finite(r["metrics"][metric]["min"]) for r in rows])
    high = np.array([_finite(r["metrics"][metric]["max"]) for r in rows])
    ax.plot(x, med, marker="o", color="C0", label="median over seeds")
    ax.fill_between(x, low, high, color="C0", alpha=0.2, linewidth=0, label="seeds' min–max")
    for xi, row in zip(x, rows):
        seeds = [_finite(v) for v in row["per_seed"][metric].values()]
        ax.scatter([xi] * len(seeds), seeds, color="C0", s=10, alpha=0.6)
    for i, row in enumerate(r for r in report["points"] if r["included"]):
        ax.axhline(_finite(row["metrics"][metric]["median"]), color=f"C{i + 1}", linestyle="--", label=row["name"])
    ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_xlabel(key)
    ax.set_ylabel(report["metric"]["title"])
    ax.set_title(_title(report), fontsize=9)
    ax.legend(fontsize="small")
    return fig


def _ranked(report):
    metric = report["metric"]["name"]
    rows = [r for r in report["points"] if r["completed"]]
    fig, ax = new_figure(figsize=(7.5, 0.35 * len(rows) + 1.5))
    y = np.arange(len(rows))[::-1]
    med = np.array([_finite(r["metrics"][metric]["median"]) for r in rows])
    low = np.array([_finite(r["metrics"][metric]["min"]) for r in rows])
    high = np.array([_finite(r["metrics"][metric]["max"]) for r in rows])
    ax.errorbar(med, y, xerr=[med - low, high - med], fmt="o", color="C0", capsize=3)
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=7)
    ax.set_xlabel(report["metric"]["title"] + " (median, seeds' min–max)")
    ax.set_title(_title(report), fontsize=9)
    return fig


def _finite(value: Any) -> float:
    """NaN for what cannot be drawn (a censored inf, a missing value)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def search_figure(report: dict[str, Any]):
    """Left: each trial's metric in trial order, the best so far as a step line; pruned trials
    as crosses at their last reported value, failed ones as ticks on the axis. Right: the metric
    against the most important parameter (the report's importance rule), log-scaled for a
    log-uniform range, one column per value for a choice; the best trial starred."""
    search = report["search"]
    metric, higher = search.get("metric") or "val_acc", report["metric"]["direction"] == "higher"
    if search.get("metric") == "val_loss":
        higher = False
    trials = search["trials"]
    done = [t for t in trials if t["status"] == "completed" and t["value"] is not None]
    pruned = [t for t in trials if t["status"] == "pruned" and t["value"] is not None]
    failed = [t for t in trials if t["status"] == "failed"]
    fig, (left, right) = new_figure(1, 2, figsize=(11.0, 4.4))
    if done:
        left.scatter([t["trial"] for t in done], [t["value"] for t in done], color="C0", s=22, zorder=3,
                     label=f"completed ({len(done)})")
        order = sorted(done, key=lambda t: t["trial"])
        best, xs, ys = None, [], []
        for t in order:
            best = t["value"] if best is None or (t["value"] > best if higher else t["value"] < best) else best
            xs.append(t["trial"])
            ys.append(best)
        last = max(t["trial"] for t in trials)
        if last > xs[-1]:  # (flat to the last trial, whatever it was)
            xs, ys = xs + [last], ys + [ys[-1]]
        left.step(xs, ys, where="post", color="C1", label="best so far")
    if pruned:
        left.scatter([t["trial"] for t in pruned], [t["value"] for t in pruned], marker="x", color="C3", s=26,
                     zorder=3, label=f"pruned ({len(pruned)}; at its last evaluation)")
    if failed:
        left.scatter([t["trial"] for t in failed], [0.0] * len(failed), marker="|", color="gray", s=60,
                     transform=left.get_xaxis_transform(), clip_on=False, label=f"failed ({len(failed)})")
    left.set_xlabel("trial")
    left.set_ylabel(metric)
    left.set_title(f"{report['name']}: {search.get('sampler')} search, prune {search.get('prune')} "
                   f"({'higher' if higher else 'lower'} is better)", fontsize=9)
    left.legend(fontsize="small")
    key = search.get("most_important")
    param = next((p for p in search.get("params", []) if p["key"] == key), None)
    if param is None:
        right.text(0.5, 0.5, "fewer than 3 completed trials: no importance", ha="center", va="center",
                   transform=right.transAxes)
        right.set_axis_off()
        return fig
    choices = [_key(v) for v in param["args"]] if param["kind"] == "choice" else None

    def x_of(t):
        value = t["overrides"].get(key)
        return choices.index(_key(value)) if choices is not None else float(value)

    shown = [t for t in done + pruned if key in t["overrides"]]
    for group, style in ((done, {"color": "C0", "s": 22}), (pruned, {"color": "C3", "s": 26, "marker": "x"})):
        group = [t for t in group if t in shown]
        if group:
            right.scatter([x_of(t) for t in group], [t["value"] for t in group], zorder=3, **style)
    best = search.get("best")
    if best and key in (best.get("overrides") or {}):
        right.scatter([x_of(best)], [best["value"]], marker="*", color="C1", s=160, zorder=4, label="best trial")
        right.legend(fontsize="small")
    if choices is not None:
        right.set_xticks(range(len(choices)), [str(v) for v in param["args"]])
        right.set_xlim(-0.5, len(choices) - 0.5)
    elif param["kind"] in ("loguniform", "ratio"):
        right.set_xscale("log")
    share = search["importance"][key]
    right.set_xlabel(key)
    right.set_ylabel(metric)
    right.set_title(f"most important: {key} (explains {share:.0%} of the variance; "
                    f"{'eta²' if choices is not None else 'Spearman rho²'})", fontsize=9)
    return fig
