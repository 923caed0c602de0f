"""Load what ``compare`` reads: run directories, seed groups and globs (SPEC.md, "Run directory").

A *side* is what the user names on the command line: one run directory, a group directory
(``group.json`` from ``clrctl train --seeds``, or a directory whose subdirectories are runs),
or a quoted glob (``'runs/digits-tri*/seed-*'``). Everything is read from CSV, JSON and YAML;
a missing, unfinished (status ``running``) or unreadable run is an :class:`InputError` (exit 2).

A multi-seed range test (``clrctl range-test --seeds N``) is *one* run: its top-level
``summary.json`` holds the median suggestion and its spread, and each seed's sweep lives in
``seeds/seed-K/metrics.csv`` (no top-level ``metrics.csv``); :attr:`Run.sweeps` holds them all.
"""

from __future__ import annotations

import csv
import glob as _glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from clrctl.config import yamlsafe
from clrctl.errors import InputError
from clrctl.files.atomic import read_json
from clrctl.runs.rundir import TERMINAL_STATUSES, holder, is_live

KINDS = ("train", "range-test")
_GLOB_CHARS = set("*?[")


@dataclass
class Run:
    """One finished run directory, read into memory (columns as float arrays, blank = NaN)."""

    path: Path
    info: dict[str, Any]  # run.json
    config: dict[str, Any]  # config.yaml
    summary: dict[str, Any]  # summary.json ({} when absent)
    metrics: dict[str, np.ndarray]  # metrics.csv, one row per optimizer step
    epochs: dict[str, np.ndarray] = field(default_factory=dict)  # epochs.csv (train)
    # range test: (seed, metrics.csv) per sweep; one entry (``metrics``) unless --seeds N > 1
    sweeps: list[tuple[Optional[int], dict[str, np.ndarray]]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.info.get("kind", "train")

    @property
    def status(self) -> str:
        return self.info.get("status", "")

    @property
    def seed(self) -> Optional[int]:
        seed = self.info.get("seed", self.config.get("seed"))
        return seed if isinstance(seed, int) else None


@dataclass
class Side:
    """What one command-line argument names: a single run or a group of seeds."""

    label: str
    source: str
    runs: list[Run]
    is_group: bool

    @property
    def kind(self) -> str:
        return self.runs[0].kind

    @property
    def seeds(self) -> list[Optional[int]]:
        return [run.seed for run in self.runs]


def load_side(spec: str) -> Side:
    """A run directory, a group directory or a glob -> a :class:`Side`."""
    if any(ch in spec for ch in _GLOB_CHARS) and not Path(spec).exists():
        matches = sorted(p for p in _glob.glob(spec) if Path(p).is_dir())
        if not matches:
            raise InputError(f"{spec}: no run directories match this pattern")
        return _checked(Side(label=spec, source=spec, runs=[load_run(p) for p in matches], is_group=True))
    path = Path(spec)
    if not path.exists():
        raise InputError(f"{spec}: no such run directory")
    if not path.is_dir():
        raise InputError(f"{spec}: not a directory (expected a run or a group of runs)")
    if (path / "run.json").is_file():
        return Side(label=_name(path), source=spec, runs=[load_run(path)], is_group=False)
    members = group_members(path)
    return _checked(Side(label=_name(path), source=spec, runs=[load_run(p) for p in members], is_group=True))


def _checked(side: Side) -> Side:
    """A group is several seeds of one config: refuse a side that repeats a seed or pools runs
    of different configs (a glob over two groups), naming the seed or the first differing key."""
    from clrctl.compare.configdiff import config_diff

    first = side.runs[0]
    seen: dict[int, Path] = {}
    for run in side.runs:
        if run.seed is not None and run.seed in seen:
            raise InputError(f"{side.source}: seed {run.seed} appears twice ({seen[run.seed]}, {run.path}); "
                             "a side is one config's seeds: compare each group as a side of its own")
        if run.seed is not None:
            seen[run.seed] = run.path
        diff = config_diff(first.config, run.config, first.kind) if run.kind == first.kind else []
        if diff:
            key = diff[0]
            raise InputError(f"{side.source}: mixes runs of different configs ({key['key']}: "
                             f"{_short(key['baseline'])} in {first.path}, {_short(key['candidate'])} in {run.path}); "
                             "compare each config as a side of its own")
    return side


def _short(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


def group_members(path: Path) -> list[Path]:
    """The run directories of a group: ``group.json``'s ``runs`` or the subdirectories with a run.json."""
    group_file = path / "group.json"
    if group_file.is_file():
        group = read_json(group_file)
        names = group.get("runs")
        if not isinstance(names, list) or not names:
            raise InputError(f"{group_file}: unreadable (expected a non-empty 'runs' list)")
        return [path / str(name) for name in names]
    members = sorted(p for p in path.iterdir() if p.is_dir() and (p / "run.json").is_file())
    if not members:
        raise InputError(f"{path}: not a clrctl run directory (no run.json) nor a group of runs")
    return members


def load_run(path: str | Path) -> Run:
    """Read one run directory; refuse a missing, unfinished or unreadable one."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: no such run directory")
    if not (path / "run.json").is_file():
        raise InputError(f"{path}: not a clrctl run directory (no run.json)")
    info = read_json(path / "run.json")
    _check_info(path, info)
    summary = read_json(path / "summary.json") if (path / "summary.json").is_file() else {}
    metrics_file = path / "metrics.csv"
    if metrics_file.is_file():
        metrics = read_columns(metrics_file)
        sweeps = [(info.get("seed") if isinstance(info.get("seed"), int) else None, metrics)]
    elif info.get("kind") == "range-test" and _seed_dirs(path, summary):
        sweeps = [(seed, read_columns(where / "metrics.csv")) for seed, where in _seed_dirs(path, summary)]
        metrics = sweeps[0][1]
    else:
        raise InputError(f"{path}: unreadable run (no metrics.csv)")
    return Run(
        path=path,
        info=info,
        config=_read_yaml(path / "config.yaml"),
        summary=summary,
        metrics=metrics,
        epochs=read_columns(path / "epochs.csv") if (path / "epochs.csv").is_file() else {},
        sweeps=sweeps if info.get("kind") == "range-test" else [],
    )


def _seed_dirs(path: Path, summary: dict[str, Any]) -> list[tuple[Optional[int], Path]]:
    """A multi-seed range test's sweeps: ``summary.json``'s ``per_seed`` paths, else ``seeds/seed-*``."""
    listed = summary.get("per_seed")
    if isinstance(listed, list) and listed:
        dirs = [(entry.get("seed"), path / str(entry.get("path", f"seeds/seed-{entry.get('seed')}")))
                for entry in listed if isinstance(entry, dict)]
    else:
        dirs = [(_seed_of(p), p) for p in sorted((path / "seeds").glob("seed-*"), key=_seed_of)]
    for _, where in dirs:
        if not (where / "metrics.csv").is_file():
            raise InputError(f"{where}: unreadable range-test seed (no metrics.csv)")
    return [(seed if isinstance(seed, int) else None, where) for seed, where in dirs]


def _seed_of(path: Path) -> int:
    suffix = path.name.removeprefix("seed-")
    return int(suffix) if suffix.isdigit() else -1


def _check_info(path: Path, info: dict[str, Any]) -> None:
    status, kind = info.get("status"), info.get("kind", "train")
    if status == "running" and is_live(path):
        raise InputError(f"{path}: run is unfinished (still running: {holder(path)}); compare finished runs only")
    if status == "running":  # its writer was killed (kill -9, a machine that died)
        again = f"resume with: clrctl train --resume {path}" if kind == "train" else "run it again"
        raise InputError(f"{path}: left 'running' by a process that is gone; {again}")
    if status not in TERMINAL_STATUSES:
        raise InputError(f"{path}: unreadable run.json (unknown status {status!r})")
    if kind not in KINDS:
        raise InputError(f"{path}: unreadable run.json (unknown kind {kind!r})")


TEXT_COLUMNS = ("stage",)  # the stage name of a fine-tuning run: not a number, not compared


def read_columns(path: Path) -> dict[str, np.ndarray]:
    """A CSV with a header -> {column: float array}; blank cells become NaN."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = [row for row in reader if row]
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: unreadable ({err.__class__.__name__})") from None
    if not header:
        raise InputError(f"{path}: unreadable (empty file)")
    columns: dict[str, list[float]] = {name: [] for name in header if name not in TEXT_COLUMNS}
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise InputError(f"{path}: unreadable (line {number} has {len(row)} fields, expected {len(header)})")
        for name, cell in zip(header, row):
            if name not in TEXT_COLUMNS:
                columns[name].append(_float(cell, path, number, name))
    return {name: np.asarray(values, dtype=float) for name, values in columns.items()}


def _float(cell: str, path: Path, line: int, column: str) -> float:
    if cell.strip() == "":
        return float("nan")
    try:
        return float(cell)
    except ValueError:
        raise InputError(f"{path}: unreadable (line {line}, column {column}: {cell!r} is not a number)") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}  # an old or foreign run: compare what is there, the config diff is just empty
    try:
        data = yamlsafe.load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise InputError(f"{path}: unreadable ({err.__class__.__name__})") from None
    return data if isinstance(data, dict) else {}


def _name(path: Path) -> str:
    return path.resolve().name or str(path)


def unique_labels(sides: list[Side]) -> None:
    """Make labels unique in place: ``a/seed-0`` instead of two ``seed-0``."""
    for depth in (2, 3):
        seen: dict[str, int] = {}
        for side in sides:
            seen[side.label] = seen.get(side.label, 0) + 1
        clashes = {label for label, count in seen.items() if count > 1}
        if not clashes:
            return
        for side in sides:
            if side.label in clashes and not any(ch in side.source for ch in _GLOB_CHARS):
                side.label = "/".join(Path(side.source).resolve().parts[-depth:])
    for i, side in enumerate(sides):
        if sum(s.label == side.label for s in sides) > 1:
            side.label = f"{side.label}#{i + 1}"


def load_sides(specs: list[str], baseline: Optional[str] = None) -> tuple[list[Side], int]:
    """Load every side; the baseline is the first unless ``baseline`` names one (or another run).
    One side alone is a summary of that run or group (no comparison)."""
    index = 0
    if baseline is not None:
        matches = [i for i, spec in enumerate(specs) if _same(spec, baseline)]
        if matches:
            index = matches[0]
        else:
            specs, index = [baseline, *specs], 0
    if not specs:
        raise InputError("compare needs a run (its summary) or two or more (a baseline and candidates)")
    sides = [load_side(spec) for spec in specs]
    unique_labels(sides)
    return sides, index


def _same(spec: str, other: str) -> bool:
    if spec == other:
        return True
    try:
        return Path(spec).exists() and Path(other).exists() and Path(spec).resolve() == Path(other).resolve()
    except OSError:
        return False
