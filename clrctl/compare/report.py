"""Build the comparison report: plain data (dicts, lists, floats), the same for every format.

:func:`build_report` takes the loaded sides and returns what :mod:`.render` turns into a rich
table, markdown or JSON. Nothing here prints or draws. Non-finite floats stay in the report
(``inf`` = a censored steps-to-target); :func:`.render.to_json` writes them as ``null``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np

from clrctl.compare import stats
from clrctl.compare.metrics import (
    HIGHER,
    LOWER,
    NEUTRAL,
    RANGE_METRICS,
    TRAIN_METRICS,
    Metric,
    Target,
    range_scalars,
    shared_budget,
    target_from_run,
    train_scalars,
)
from clrctl.compare.configdiff import IGNORED_CONFIG_KEYS, IGNORED_SECTIONS, config_diff, flatten  # noqa: F401
from clrctl.compare.runs import Side
from clrctl.compare.stats import Tolerance
from clrctl.errors import InputError

SCHEMA_VERSION = 1
IDENTITY_KEYS = ("dataset.name", "model.name")  # runs that differ here are not comparable
# runs that differ here compute another loss (label smoothing adds its term to val_loss too):
# their losses are reported, not judged
LOSS_KEYS = ("train.loss", "train.label_smoothing")
FEW_SEEDS = 3


@dataclass
class Options:
    target: Optional[Target] = None
    metric: str = "final_val_acc"  # the metric the gate judges
    tolerance: Optional[Tolerance] = None  # for ``metric``; other metrics keep their default
    gate: bool = False
    strict: bool = False  # inconclusive fails the gate too
    n_boot: int = stats.N_BOOTSTRAP
    confidence: float = stats.CONFIDENCE
    seed: int = stats.BOOTSTRAP_SEED


def build_report(sides: list[Side], baseline: int, options: Options) -> dict[str, Any]:
    """The whole report; ``sides[baseline]`` is the baseline, every other side a candidate."""
    kinds = {side.kind for side in sides} | {run.kind for side in sides for run in side.runs}
    if len(kinds) > 1:
        raise InputError("cannot compare training runs with range tests; compare like with like")
    if "range-test" in kinds:
        if options.gate or options.target is not None:
            raise InputError("--gate and --target apply to training runs; range tests compare by their suggestions")
        return _build(sides, baseline, options, RANGE_METRICS, "range-test", None, math.nan)
    target = options.target
    report_notes = []
    if target is None:
        target = target_from_run(sides[baseline].runs[0])
        if target is not None:
            report_notes.append(f"target {target} taken from the baseline's config")
            options = replace(options, target=target)
    budget = shared_budget([run for side in sides for run in side.runs])
    report = _build(sides, baseline, options, TRAIN_METRICS, "train", target, budget)
    report["notes"] = report_notes + report["notes"]
    return report


def _build(sides, baseline, options, metrics, kind, target, budget) -> dict[str, Any]:
    if kind == "train" and options.metric not in metrics:
        raise InputError(f"--metric {options.metric!r}: expected one of {', '.join(_gateable(metrics))}")
    values = [_side_values(side, kind, target, budget) for side in sides]
    shown = _shown_metrics(metrics, values, target)
    runs = [_side_entry(side, vals, shown) for side, vals in zip(sides, values)]
    comparisons = [
        _comparison(sides[baseline], values[baseline], sides[i], values[i], shown, options)
        for i in range(len(sides))
        if i != baseline
    ]
    if kind == "range-test":
        for comp, i in zip(comparisons, [i for i in range(len(sides)) if i != baseline]):
            comp["max_lr_shift_decades"] = _decades(runs[baseline], runs[i], "max_lr")
    report = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "baseline": sides[baseline].label,
        "target": {"metric": target.metric, "value": target.value} if target else None,
        "budget_steps": budget,
        "metrics": {name: _metric_info(metrics[name]) for name in shown},
        "runs": runs,
        "comparisons": comparisons,
    }
    report["gate"] = _gate(comparisons, options, kind)
    report["verdict"] = _overall(comparisons, report["gate"])
    report["notes"] = _notes(sides, comparisons)
    return report


def _gateable(metrics: dict[str, Metric]) -> list[str]:
    return [name for name, m in metrics.items() if m.direction != NEUTRAL]


def _metric_info(metric: Metric) -> dict[str, Any]:
    direction = {HIGHER: "higher", LOWER: "lower", NEUTRAL: None}[metric.direction]
    return {"title": metric.title, "direction": direction, "unit": metric.unit}


def _side_values(side: Side, kind: str, target, budget) -> dict[str, np.ndarray]:
    """{metric: one value per run}."""
    rows = [train_scalars(run, target, budget) if kind == "train" else range_scalars(run) for run in side.runs]
    return {name: np.array([row[name] for row in rows], dtype=float) for name in rows[0]}


def _shown_metrics(metrics: dict[str, Metric], values: list[dict[str, np.ndarray]], target) -> list[str]:
    """Metrics known for at least one run (steps to target only with a target or a record)."""
    shown = []
    for name in metrics:
        known = any(not np.isnan(v[name]).all() for v in values)
        if known or (name == "steps_to_target" and target is not None):
            shown.append(name)
    return shown


def _filled(values: np.ndarray, metric: Metric) -> np.ndarray:
    """A missing value (a diverged run's accuracy, say) counts as the worst possible one."""
    if metric.direction == NEUTRAL:
        return values
    worst = -math.inf if metric.direction == HIGHER else math.inf
    return np.where(np.isnan(values), worst, values)


def _side_entry(side: Side, values: dict[str, np.ndarray], shown: list[str]) -> dict[str, Any]:
    metrics = TRAIN_METRICS if side.kind == "train" else RANGE_METRICS
    entry_metrics = {}
    for name in shown:
        filled = _filled(values[name], metrics[name])
        entry = stats.summarize(filled)
        if name == "steps_to_target":
            censored = np.isposinf(filled)
            entry["censored"] = int(censored.sum())
            entry["censored_at"] = float(np.nanmax(values["steps"][censored])) if censored.any() else None
            entry["reached"] = bool(math.isfinite(entry["median"]))
            entry["bound"] = None if entry["reached"] else censored_bound(filled, values["steps"])
        entry_metrics[name] = entry
    return {
        "label": side.label,
        "source": side.source,
        "is_group": side.is_group,
        "n": len(side.runs),
        "seeds": side.seeds,
        "statuses": [run.status for run in side.runs],
        "metrics": entry_metrics,
        "per_run": [
            {"path": str(run.path), "seed": run.seed, "status": run.status,
             **({"suggestion": run.summary.get("suggestion")} if run.kind == "range-test" else {}),
             "values": {name: float(values[name][i]) for name in shown},
             **({"target_reached": bool(math.isfinite(values["steps_to_target"][i]))}
                if "steps_to_target" in shown and not math.isnan(values["steps_to_target"][i]) else {})}
            for i, run in enumerate(side.runs)
        ],
    }


def pairing(base: Side, cand: Side) -> Optional[tuple[list[int], list[int]]]:
    """Indices of the runs that share a seed, when both sides are groups sharing >= 2 seeds."""
    if len(base.runs) < 2 or len(cand.runs) < 2 or None in base.seeds or None in cand.seeds:
        return None
    shared = [s for s in base.seeds if s in cand.seeds]
    if len(shared) < 2 or len(set(shared)) != len(shared):
        return None
    return [base.seeds.index(s) for s in shared], [cand.seeds.index(s) for s in shared]


def _comparison(base: Side, b_vals, cand: Side, c_vals, shown, options: Options) -> dict[str, Any]:
    metrics = TRAIN_METRICS if base.kind == "train" else RANGE_METRICS
    pairs = pairing(base, cand)
    entries = {}
    for name in shown:
        tol = options.tolerance if (name == options.metric and options.tolerance) else Tolerance.parse(metrics[name].tolerance)
        entries[name] = compare_metric(metrics[name], b_vals[name], c_vals[name], pairs, tol, options)
        if name == "steps_to_target":
            censor(entries[name], metrics[name], b_vals, c_vals, pairs)
    comp = {
        "candidate": cand.label,
        "paired": pairs is not None,
        "n_pairs": len(pairs[0]) if pairs else 0,
        "comparable": True,
        "not_comparable": [],
        "config_diff": config_diff(base.runs[0].config, cand.runs[0].config, base.kind),
        "metrics": entries,
    }
    comp["not_comparable"] = [d["key"] for d in comp["config_diff"] if d["key"] in IDENTITY_KEYS]
    comp["comparable"] = not comp["not_comparable"]
    comp["loss_differs"] = [d["key"] for d in comp["config_diff"] if d["key"] in LOSS_KEYS]
    if comp["loss_differs"]:
        for name in _loss_metrics(shown, options.target):
            entries[name]["verdict"] = "incomparable"
    if "steps_to_target" in shown:
        comp["speedup"] = speedup(b_vals, c_vals, pairs, options)
    return comp


def _loss_metrics(shown: list[str], target: Optional[Target]) -> list[str]:
    """The metrics measured in the loss: final val loss, and steps to a val_loss target."""
    loss_target = target is not None and target.metric.endswith("loss")
    return [name for name in shown if name == "final_val_loss" or (name == "steps_to_target" and loss_target)]


def compare_metric(metric: Metric, base: np.ndarray, cand: np.ndarray, pairs, tol: Tolerance, options) -> dict[str, Any]:
    """Old, new, difference (with its bootstrap CI for groups) and the verdict of one metric."""
    base, cand = _filled(base, metric), _filled(cand, metric)
    old, new = stats.summarize(base)["median"], stats.summarize(cand)["median"]
    if pairs is not None:
        base, cand = base[pairs[0]], cand[pairs[1]]
        diff = float(stats.median_rows(stats.subtract(cand, base)))
    else:
        diff = stats.subtract(new, old)
    low = high = diff
    grouped = (len(base) > 1 or len(cand) > 1) and metric.direction != NEUTRAL
    if grouped:
        low, high = stats.bootstrap_ci(base, cand, pairs is not None, n_boot=options.n_boot,
                                       confidence=options.confidence, seed=options.seed)
    tolerance = tol.absolute(old)
    with np.errstate(all="ignore"):
        rel = diff / abs(old) if old and math.isfinite(old) and math.isfinite(diff) else math.nan
    decades = math.log10(new / old) if metric.unit == "lr" and old > 0 and new > 0 and math.isfinite(old * new) else None
    return {
        "old": old, "new": new, "diff": diff, "rel_diff": rel,
        **({"diff_decades": decades} if metric.unit == "lr" else {}),  # LRs differ by factors, not percents
        "ci_low": low if grouped else None, "ci_high": high if grouped else None,
        "direction": _metric_info(metric)["direction"],
        "tolerance": str(tol), "tolerance_abs": tolerance,
        "verdict": stats.verdict(metric.direction, low, high, tolerance),
    }


def speedup(b_vals, c_vals, pairs, options: Options) -> dict[str, Any]:
    """Baseline steps to target / candidate steps to target (median over seeds), with bounds.

    A side that never reached the target counts at its censoring bound (:func:`censored_bound`):
    the speed-up is then a bound (``>`` when the baseline did not get there, ``<`` when the
    candidate did not), and unknown (None) when neither did."""
    b_steps, c_steps = b_vals["steps_to_target"], c_vals["steps_to_target"]
    b, c = stats.summarize(b_steps)["median"], stats.summarize(c_steps)["median"]
    out: dict[str, Any] = {"value": None, "bound": None, "ci_low": None, "ci_high": None,
                           "censored": _censored_side(math.isinf(b), math.isinf(c))}
    if math.isnan(b) or math.isnan(c) or (math.isinf(b) and math.isinf(c)):
        return out
    if math.isinf(c):  # the candidate never got there: at most baseline / its bound
        out.update(value=b / censored_bound(c_steps, c_vals["steps"]), bound="<")
    elif math.isinf(b):
        out.update(value=censored_bound(b_steps, b_vals["steps"]) / c, bound=">")
    else:
        out.update(value=b / c, bound="=")
        if (len(b_steps) > 1 or len(c_steps) > 1) and np.isfinite(b_steps).all() and np.isfinite(c_steps).all():
            out["ci_low"], out["ci_high"] = _speedup_ci(b_steps, c_steps, pairs, options)
    return out


def censored_bound(values: np.ndarray, steps: np.ndarray) -> float:
    """A lower bound of a censored median: the median with each run that never reached the
    target counted at the steps it did (its true value is larger, and the median is monotone)."""
    values = np.asarray(values, dtype=float)
    replaced = np.where(np.isposinf(values), np.asarray(steps, dtype=float), values)
    return float(stats.summarize(replaced)["median"])


def censor(entry: dict[str, Any], metric: Metric, b_vals, c_vals, pairs) -> None:
    """Steps to target when a side never reached it: no infinite difference, CI or zero
    tolerance, but which side was censored and the bound the difference is known to obey."""
    base, cand = _filled(b_vals["steps_to_target"], metric), _filled(c_vals["steps_to_target"], metric)
    b_cens, c_cens = math.isinf(entry["old"]), math.isinf(entry["new"])
    entry["censored"] = _censored_side(b_cens, c_cens)
    entry["reached"] = {"baseline": not b_cens, "candidate": not c_cens}
    entry["diff_bound"] = None
    if b_cens and c_cens:  # neither got there: no difference to show (the verdict stays "same")
        entry.update(diff=math.nan, rel_diff=math.nan)
    elif math.isinf(entry["diff"]):
        low_base = np.where(np.isposinf(base), b_vals["steps"], base)
        low_cand = np.where(np.isposinf(cand), c_vals["steps"], cand)
        if pairs is not None:
            bound = float(stats.median_rows(low_cand[pairs[1]] - low_base[pairs[0]]))
        else:
            bound = stats.summarize(low_cand)["median"] - stats.summarize(low_base)["median"]
        # a censored baseline is larger than its bound, so the difference is smaller, and vice versa
        entry["diff_bound"] = {"op": "<" if entry["diff"] < 0 else ">", "value": float(bound)}
        # paired seeds can make the median difference censored while neither median is
        entry["censored"] = entry["censored"] or ("baseline" if entry["diff"] < 0 else "candidate")
        entry["diff"] = math.nan
    if b_cens:
        tolerance = Tolerance.parse(entry["tolerance"])
        entry["tolerance_abs"] = tolerance.absolute(censored_bound(base, b_vals["steps"]))


def _censored_side(base: bool, cand: bool) -> Optional[str]:
    return "both" if base and cand else "baseline" if base else "candidate" if cand else None


def _speedup_ci(b_steps, c_steps, pairs, options) -> tuple[float, float]:
    if pairs is not None:
        b_steps, c_steps = b_steps[pairs[0]], c_steps[pairs[1]]
        statistic = lambda b, c: stats.median_rows(b / c)  # noqa: E731
    else:
        statistic = lambda b, c: stats.median_rows(b) / stats.median_rows(c)  # noqa: E731
    return stats.bootstrap_ci(b_steps, c_steps, pairs is not None, statistic=statistic,
                              n_boot=options.n_boot, confidence=options.confidence, seed=options.seed)


def _decades(base: dict[str, Any], cand: dict[str, Any], name: str) -> Optional[float]:
    b, c = base["metrics"][name]["median"], cand["metrics"][name]["median"]
    if not (b > 0 and c > 0 and math.isfinite(b) and math.isfinite(c)):
        return None
    return math.log10(c / b)


def _gate(comparisons: list[dict[str, Any]], options: Options, kind: str) -> dict[str, Any]:
    """The gate metric's verdict per candidate and the result: pass / regression / inconclusive,
    or incomparable when no candidate is comparable. A candidate that is not comparable (another
    data set or model) is reported as ``incomparable`` and never fails the gate (README)."""
    if kind != "train" or not comparisons:  # range tests are described; one run alone is a summary
        return {"enabled": False, "metric": None, "tolerance": None, "result": None, "candidates": {}}
    verdicts = {c["candidate"]: c["metrics"].get(options.metric, {}).get("verdict", "inconclusive")
                if c["comparable"] else "incomparable" for c in comparisons}
    judged = [v for v in verdicts.values() if v != "incomparable"]
    if "worse" in judged:
        result = "regression"
    elif "inconclusive" in judged:
        result = "inconclusive"
    else:
        result = "pass" if judged else "incomparable"
    tolerance = options.tolerance or Tolerance.parse(TRAIN_METRICS[options.metric].tolerance)
    return {"enabled": options.gate, "metric": options.metric, "tolerance": str(tolerance),
            "strict": options.strict, "result": result, "candidates": verdicts}


def _overall(comparisons: list[dict[str, Any]], gate: dict[str, Any]) -> str:
    if gate["result"] == "regression":
        return "regression"
    if any(not c["comparable"] for c in comparisons):
        return "incomparable"
    return gate["result"] or "n/a"


def _notes(sides: list[Side], comparisons: list[dict[str, Any]]) -> list[str]:
    notes = []
    for side in sides:
        if side.is_group and len(side.runs) < FEW_SEEDS:
            notes.append(f"{side.label}: only {len(side.runs)} run(s); the confidence interval is wide")
        for run in side.runs:
            warnings = (run.summary.get("suggestion") or {}).get("warnings") if run.kind == "range-test" else None
            notes += [f"{side.label}: {w}" for w in warnings or [] if isinstance(w, str)]
            if run.status != "completed":
                name = f"{side.label}/{run.path.name}" if side.is_group else side.label
                notes.append(f"{name}: status {run.status}; its missing values count as the worst")
    for comp in comparisons:
        if not comp["comparable"]:
            keys = ", ".join(comp["not_comparable"])
            verb = "differs" if len(comp["not_comparable"]) == 1 else "differ"
            notes.append(f"{comp['candidate']}: not comparable with the baseline ({keys} {verb})")
        if comp.get("loss_differs"):
            keys = ", ".join(comp["loss_differs"])
            notes.append(f"{comp['candidate']}: val_loss is not comparable with the baseline's ({keys} differs: "
                         "another loss is computed); its loss is reported, not judged — compare by val_acc")
    return notes


def exit_code(report: dict[str, Any]) -> int:
    """0, or 1 when the gate is on and a candidate regressed (or is inconclusive under --strict)."""
    gate = report["gate"]
    if not gate["enabled"]:
        return 0
    if gate["result"] == "regression" or (gate["strict"] and gate["result"] == "inconclusive"):
        return 1
    return 0
