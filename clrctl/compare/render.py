"""Render a report (from :mod:`.report`) as rich tables, GitHub markdown or JSON.

Each function only formats what the report holds. Accuracies and losses are shown as
fractions (the units of ``--tolerance``), a group as ``median [min–max]``, a run that never
reached the target as ``not reached (>N)`` (N = the steps it did); no output shows ``inf`` or
``nan``: a censored difference is a bound (``< -822``).

Everything the rich renderer prints is a :class:`~rich.text.Text`, so run names, paths and
config values such as ``[0.01, 0.1]`` print literally (rich would read ``[...]`` as markup).
A table that does not fit the terminal becomes a vertical list, one block per run or metric,
so that no run name, path or CI is ever broken across lines.
"""

from __future__ import annotations

import io
import json
import math
import re
import textwrap
from collections import Counter
from typing import Any, Optional

from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

VERDICT_STYLE = {"better": "green", "worse": "bold red", "same": "dim", "inconclusive": "yellow", "-": "dim",
                 "not comparable": "yellow"}
RESULT_STYLE = {"pass": "bold green", "regression": "bold red", "inconclusive": "bold yellow",
                "incomparable": "bold yellow", "n/a": "dim"}
VERDICT_WORDS = {"incomparable": "not comparable"}  # the JSON value -> the words people read
ARROW = {"higher": "↑", "lower": "↓", None: ""}


# -- numbers -----------------------------------------------------------------------------
def fmt_value(value: Optional[float], unit: str, censored_at: Optional[float] = None, signed: bool = False) -> str:
    """A metric value in its unit; ``signed`` for a difference (``+0.0067``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):  # only a censored steps-to-target may get here, and it is a bound
        return f">{censored_at:.0f}" if unit == "steps" and value > 0 and censored_at is not None else "—"
    sign = "+" if signed else ""
    if unit in ("acc", "loss"):
        return f"{value:{sign}.4f}"
    if unit in ("steps", "count"):
        return f"{value:{sign}.0f}" if float(value).is_integer() else f"{value:{sign}.1f}"
    if unit == "seconds":
        return f"{value:{sign}.1f} s"
    if unit == "decades":
        return f"{value:{sign}.2f} dec"
    return f"{value:{sign}.3g}"


def fmt_diff(value: Optional[float], unit: str) -> str:
    return fmt_value(value, unit, signed=True)


def fmt_pct(value: Optional[float]) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value * 100:+.1f}%"


def fmt_decades(decades: Optional[float]) -> str:
    """A ratio of LRs: ``+0.20 dec (×1.58)``; a percentage would read +95947.3% for 3 decades."""
    if decades is None or not math.isfinite(decades):
        return "—"
    return f"{decades:+.2f} dec (×{10 ** decades:.3g})"


def fmt_side(entry: dict[str, Any], unit: str) -> str:
    """``0.9733`` for one run; ``0.9733 [0.9650–0.9780]`` (median [min–max]) for a group;
    ``not reached (>1032)`` when the (median) run never reached the target."""
    at = entry.get("censored_at")
    text = fmt_value(entry["median"], unit, at)
    if entry.get("reached") is False and entry.get("bound") is not None:
        text = f"not reached (>{fmt_value(entry['bound'], unit)})"
    if entry["n"] > 1:
        text += f" [{fmt_value(entry['min'], unit, at)}–{fmt_value(entry['max'], unit, at)}]"
    return text


def fmt_delta(entry: dict[str, Any], unit: str) -> str:
    """The difference, or the bound it obeys when a side never reached the target."""
    if entry.get("diff_bound"):
        return f"{entry['diff_bound']['op']} {fmt_diff(entry['diff_bound']['value'], unit)}"
    if entry.get("censored") == "both":
        return "neither reached"
    return fmt_diff(entry["diff"], unit)


def fmt_ci(entry: dict[str, Any], unit: str) -> str:
    """``[-0.0300, -0.0200]``; a censored end is open: ``≤ -430`` or ``≥ +120``."""
    if entry.get("ci_low") is None:
        return ""
    low, high = entry["ci_low"], entry["ci_high"]
    if math.isnan(low) or math.isnan(high) or (math.isinf(low) and math.isinf(high)):
        return fmt_delta(entry, unit) if entry.get("censored") else "—"
    if math.isinf(low):
        return f"≤ {fmt_diff(high, unit)}"
    if math.isinf(high):
        return f"≥ {fmt_diff(low, unit)}"
    return f"[{fmt_diff(low, unit)}, {fmt_diff(high, unit)}]"


def fmt_speedup(speed: Optional[dict[str, Any]]) -> str:
    if not speed or speed.get("value") is None:
        return "— (neither reached the target)" if speed and speed.get("censored") == "both" else "—"
    bound = "" if speed["bound"] == "=" else speed["bound"]
    text = f"{bound}{speed['value']:.2f}×"
    if speed.get("ci_low") is not None and math.isfinite(speed["ci_low"]) and math.isfinite(speed["ci_high"]):
        text += f" [{speed['ci_low']:.2f}, {speed['ci_high']:.2f}]"
    reason = {"baseline": "the baseline never reached the target",
              "candidate": "the candidate never reached the target"}.get(speed.get("censored"))
    return f"{text} ({reason})" if reason else text


def fmt_status(statuses: list[str]) -> str:
    counts = Counter(statuses)
    if len(statuses) == 1:
        return statuses[0]
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def fmt_config_value(value: Any) -> str:
    return "—" if value is None else json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)


def headline(report: dict[str, Any]) -> str:
    gate = report["gate"]
    if not report["comparisons"]:  # compare RUN: one run or group, summarised
        runs = report["runs"][0]
        what = "range test" if report["kind"] != "train" else "group" if runs["is_group"] else "run"
        return f"summary of {what} {report['baseline']}" + (f" ({runs['n']} runs)" if runs["is_group"] else "")
    if report["kind"] != "train":
        return f"range tests against {report['baseline']}"
    on = "gate" if gate["enabled"] else "judged on"
    verdict = VERDICT_WORDS.get(report["verdict"], report["verdict"])
    text = f"{verdict}: {on} {gate['metric']} (tolerance {gate['tolerance']}) against {report['baseline']}"
    if report["verdict"] == "incomparable":
        text += "; not-comparable candidates are reported, not failed"
    return text


def context_line(report: dict[str, Any]) -> str:
    parts = [f"baseline: {report['baseline']}" if report["comparisons"] else f"summary of {report['baseline']}"]
    if report.get("target"):
        parts.append(f"target {report['target']['metric']}={report['target']['value']:g}")
    budget = report.get("budget_steps")
    if budget is not None and math.isfinite(budget):
        parts.append(f"AUC over the shared {budget:.0f} steps")
    return "; ".join(parts)


# -- rows shared by the table and markdown renderers -------------------------------------------
def run_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per metric, one column per run or group (``median [min–max]`` for a group)."""
    runs = report["runs"]
    header = ["metric", "better"] + [run["label"] for run in runs]
    rows = [["runs", ""] + [_count(run) for run in runs], ["status", ""] + [fmt_status(run["statuses"]) for run in runs]]
    for name, info in report["metrics"].items():
        rows.append([info["title"], ARROW[info["direction"]]]
                    + [fmt_side(run["metrics"][name], info["unit"]) for run in runs])
    return header, rows


def _count(run: dict[str, Any]) -> str:
    if not run["is_group"]:
        return "1"
    seeds = [s for s in run["seeds"] if s is not None]
    return f"{run['n']} (seeds {','.join(map(str, seeds))})" if len(seeds) == run["n"] else str(run["n"])


def diff_rows(report: dict[str, Any], comp: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per metric: the candidate's difference from the baseline (and, for training runs,
    its tolerance and verdict; range tests are described, not judged)."""
    judged = report["kind"] == "train"
    grouped = any(e.get("ci_low") is not None for e in comp["metrics"].values())
    header = ["metric", "Δ", "Δ%" if judged else "relative"] + (["95% CI of Δ"] if grouped else []) \
        + (["tolerance", "verdict"] if judged else [])
    rows = []
    for name, entry in comp["metrics"].items():
        info = report["metrics"][name]
        if info["direction"] is None and judged:
            continue  # steps, epochs: shown in the runs table, nothing to judge
        unit = info["unit"]
        relative = fmt_decades(entry.get("diff_decades")) if unit == "lr" else fmt_pct(entry["rel_diff"])
        row = [info["title"], fmt_delta(entry, unit), relative]
        if grouped:
            row.append(fmt_ci(entry, unit))
        if judged:
            row += [f"±{fmt_value(entry['tolerance_abs'], unit).strip()}",
                    VERDICT_WORDS.get(entry["verdict"], entry["verdict"])]
        rows.append(row)
    return header, rows


def comparison_facts(comp: dict[str, Any]) -> list[str]:
    facts = []
    if "speedup" in comp:
        facts.append(f"speed-up to target (baseline steps / candidate steps): {fmt_speedup(comp['speedup'])}")
    if "max_lr_shift_decades" in comp and comp["max_lr_shift_decades"] is not None:
        facts.append(f"suggested max_lr shift: {comp['max_lr_shift_decades']:+.2f} decades")
    if comp["paired"]:
        facts.append(f"paired by seed ({comp['n_pairs']} shared seeds)")
    if not comp["comparable"]:
        verb = "differs" if len(comp["not_comparable"]) == 1 else "differ"
        facts.append(f"NOT COMPARABLE: {', '.join(comp['not_comparable'])} {verb}; reported, not judged by the gate")
    return facts


# -- rich ----------------------------------------------------------------------------------------
def rich_report(report: dict[str, Any], width: Optional[int] = None) -> Group:
    """The report as rich renderables; a table wider than ``width`` (the terminal) is listed
    vertically instead. Print it with ``crop=False`` so a path longer than the terminal stays
    whole (the terminal wraps it visually, a copy still gets it in one piece)."""
    parts: list[Any] = [_prose(f"clrctl compare — {context_line(report)}", width, style="bold")]
    parts.append(_block(*run_rows(report), width, title="runs", by="column"))
    for comp in report["comparisons"]:
        header, rows = diff_rows(report, comp)
        parts.append(_block(header, rows, width, title=f"{comp['candidate']} vs {report['baseline']}"))
        parts += [_prose(f"  {fact}", width, style="bold red" if fact.startswith("NOT") else "")
                  for fact in comparison_facts(comp)]
        if comp["config_diff"]:
            parts.append(_block(["changed config key", report["baseline"], comp["candidate"]],
                                [[d["key"], fmt_config_value(d["baseline"]), fmt_config_value(d["candidate"])]
                                 for d in comp["config_diff"]], width, vertical_title="changed config keys"))
    if report["kind"] == "train" and report["comparisons"]:
        parts.append(_prose(headline(report), width, style=RESULT_STYLE.get(report["verdict"], "")))
    parts += [_prose(f"note: {note}", width, style="dim") for note in report["notes"]]
    return Group(*parts)


def _line(text: str, style: str = "") -> Text:
    """A literal line (no markup) that is never wrapped: names, paths and CIs stay whole."""
    return Text(text, style=style, no_wrap=True, overflow="ignore")


def _prose(text: str, width: Optional[int], style: str = "") -> Group:
    """A literal sentence, wrapped between words only: a word longer than the line (a path) is
    left whole rather than folded (rich would fold it), and a hyphenated name is not split."""
    # keep a bracketed interval ("[2.90, 3.50]") on one line: hide its spaces from textwrap
    glued = re.sub(r"\[[^\]]*\]", lambda m: m.group().replace(" ", "\0"), text)
    lines = textwrap.wrap(glued, width, break_long_words=False, break_on_hyphens=False,
                          initial_indent="", subsequent_indent=" " * (len(text) - len(text.lstrip())) + "  ") if width else [glued]
    return Group(*(_line(line.replace("\0", " "), style) for line in lines or [""]))


def _block(header: list[str], rows: list[list[str]], width: Optional[int], title: Optional[str] = None,
           by: str = "row", vertical_title: Optional[str] = None) -> Any:
    table = _rich_table(header, rows)
    if width is None or _width_of(table) <= width:
        # the title as a line of its own: a table would fold a long name in its title
        return Group(_prose(title, width, style="bold"), table) if title else table
    return _vertical(header, rows, title or vertical_title, by, width)


def _width_of(table: Table) -> int:
    console = Console(width=10_000, file=io.StringIO())  # a wide console: the table's natural width
    return Measurement.get(console, console.options, table).maximum


def _rich_table(header: list[str], rows: list[list[str]]) -> Table:
    # Text cells: literal (no markup); no_wrap: a name or CI is never split (the table is only
    # used when it fits, see _block)
    table = Table(header_style="bold")
    for i, name in enumerate(header):
        table.add_column(Text(name), justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        style = VERDICT_STYLE.get(row[-1], "") if header[-1] == "verdict" else ""
        table.add_row(*[Text(cell) for cell in row[:-1]], Text(row[-1], style=style))
    return table


def _vertical(header: list[str], rows: list[list[str]], title: Optional[str], by: str, width: int) -> Group:
    """A table as one block per row (``by="row"``: a metric) or per column (a run): the block's
    name on a line of its own, then ``field  value`` lines."""
    lines = [_prose(title, width, style="bold")] if title else []
    if by == "column":  # the runs table: one block per run, its metrics below it
        blocks = [(header[j], [(f"{row[0]} {row[1]}".strip(), row[j]) for row in rows]) for j in range(2, len(header))]
    else:
        blocks = [(row[0], list(zip(header[1:], row[1:]))) for row in rows]
    for name, fields in blocks:
        lines.append(_line(f"  {name}", style="bold"))
        pad = max((len(field) for field, _ in fields), default=0)
        for field, value in fields:
            style = VERDICT_STYLE.get(value, "") if field == "verdict" else ""
            lines.append(Text.assemble(f"    {field:<{pad}}  ", (value, style), no_wrap=True, overflow="ignore"))
    return Group(*lines)


# -- markdown ------------------------------------------------------------------------------------
def to_markdown(report: dict[str, Any], plot: Optional[str] = None) -> str:
    """GitHub-flavoured markdown for a PR comment or ``$GITHUB_STEP_SUMMARY``."""
    icon = {"pass": "✅", "regression": "❌", "inconclusive": "⚠️", "incomparable": "⚠️"}.get(report["verdict"], "")
    title = " ".join(part for part in ("### clrctl compare", icon, headline(report)) if part)
    lines = [title, "", context_line(report), ""]
    lines += _md_table(*run_rows(report))
    for comp in report["comparisons"]:
        lines += ["", f"#### {comp['candidate']} vs {report['baseline']}", ""]
        lines += _md_table(*diff_rows(report, comp))
        facts = comparison_facts(comp)
        if facts:
            lines += [""] + [f"- {fact}" for fact in facts]
        if comp["config_diff"]:
            lines += ["", f"<details><summary>changed config keys ({len(comp['config_diff'])})</summary>", ""]
            lines += _md_table(["key", "baseline", "candidate"],
                               [[f"`{d['key']}`", fmt_config_value(d["baseline"]), fmt_config_value(d["candidate"])]
                                for d in comp["config_diff"]])
            lines += ["", "</details>"]
    if report["notes"]:
        lines += ["", "<details><summary>notes</summary>", ""] + [f"- {n}" for n in report["notes"]] + ["", "</details>"]
    if plot:
        lines += ["", f"![compare]({plot})"]
    return "\n".join(lines) + "\n"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    align = ["---"] + ["---:"] * (len(header) - 1)
    out = ["| " + " | ".join(esc(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return out


# -- json ------------------------------------------------------------------------------------------
def to_json(report: dict[str, Any]) -> str:
    """Strict JSON: NaN and ±inf become null (a censored steps-to-target has ``censored`` > 0)."""
    return json.dumps(_finite(report), indent=2) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
