"""The sweep directory: the points' configs and run directories, locks, logs and ``sweep.json``.

::

    DIR/sweep.json                 the index: grid, and per point its overrides, seeds, status, path
    DIR/configs/<point>.yaml       the point's full resolved config (clrctl train it to reproduce)
    DIR/points/<point>/            a normal run directory (one seed) or a seed group
                                   (group.json + seed-K/, as ``clrctl train --seeds`` writes)
    DIR/locks/<run>.lock           held while a process runs that run (see :mod:`.locks`)
    DIR/logs/<run>.log             the worker's output; <run>.exit.json: how its last attempt ended

A run's status always comes from its own files (``run.json``, else the last attempt's exit
record); ``sweep.json`` is an index regenerated from them (under an ``flock`` so that the last
of several shards to finish writes the final state), never the source of truth.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Iterator

import yaml

from clrctl.config import yamlsafe
from clrctl.errors import InputError
from clrctl.runs.rundir import is_live, read_json, utc_now, write_json_atomic, write_text_atomic
from clrctl.sweep.plan import Plan, Point, RunRef

SCHEMA_VERSION = 1
_LAYOUT = ("sweep.json", "configs", "points", "locks", "logs")
DONE = ("completed", "diverged")  # final: a rerun skips them (a diverged run would diverge again)


class SweepDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    # -- creation and consistency ---------------------------------------------------
    @classmethod
    def prepare(cls, path: Path, plan: Plan) -> "SweepDir":
        """Create ``path`` for ``plan``, or check that an existing sweep there ran the same points."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise InputError(f"{path}: exists and is not a directory")
        # Only sweep entries (another shard may be creating them right now), or nothing at all.
        if path.is_dir() and any(p.name not in _LAYOUT and not p.name.startswith(".sweep.json.")
                                 for p in path.iterdir()):
            raise InputError(f"{path}: exists and is not a sweep directory (it holds other files)")
        sweep = cls(path)
        sweep.check_consistent(plan)
        for sub in ("configs", "points", "locks", "logs"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        for point in plan.points:
            config = sweep.config_path(point)
            if not config.is_file():
                write_text_atomic(config, yaml.safe_dump(point.config, sort_keys=False))
            if point.is_group and not (path / point.rel / "group.json").is_file():
                write_json_atomic(path / point.rel / "group.json", {
                    "kind": "group", "name": point.name, "seeds": point.seeds,
                    "runs": [f"seed-{s}" for s in point.seeds], "created": utc_now()})
        return sweep

    def check_consistent(self, plan: Plan) -> None:
        """An existing sweep must be the same grid (its points are refused, not merged: the index
        of another grid would drop finished points from the ranking), and a point that exists
        already must have the same config and seeds as the plan's."""
        self._check_same_points(plan)
        for point in plan.points:
            config = self.config_path(point)
            if config.is_file():
                saved = yamlsafe.load(config.read_text(encoding="utf-8"))
                if saved != point.config:
                    keys = _differing_keys(saved or {}, point.config)
                    raise InputError(f"{self.path}: point {point.name} exists with a different config "
                                     f"({', '.join(keys[:3])}); sweep into a new --run-dir")
            group = self.path / point.rel / "group.json"
            if group.is_file() and read_json(group).get("seeds") != point.seeds:
                raise InputError(f"{self.path}: point {point.name} exists with other seeds "
                                 f"({read_json(group).get('seeds')}); sweep into a new --run-dir")
            if not point.is_group and group.is_file():
                raise InputError(f"{self.path}: point {point.name} exists as a seed group; sweep into a new --run-dir")

    def _check_same_points(self, plan: Plan) -> None:
        previous = self._previous_index()
        names = [p.get("name") for p in previous.get("points") or [] if isinstance(p, dict)]
        if not names or names == [p.name for p in plan.points]:
            return
        raise InputError(f"{self.path}: holds a sweep of another grid ({_grid_change(previous, plan)}); "
                         "rerun the same grid to resume it, or sweep into a new --run-dir")

    # -- paths ----------------------------------------------------------------------
    def config_path(self, point: Point) -> Path:
        return self.path / "configs" / f"{point.name}.yaml"

    def run_path(self, ref: RunRef) -> Path:
        return self.path / ref.rel

    def lock_path(self, ref: RunRef) -> Path:
        return self.path / "locks" / f"{ref.id}.lock"

    def log_path(self, ref: RunRef) -> Path:
        return self.path / "logs" / f"{ref.id}.log"

    def exit_path(self, ref: RunRef) -> Path:
        return self.path / "logs" / f"{ref.id}.exit.json"

    # -- state ----------------------------------------------------------------------
    def run_status(self, ref: RunRef) -> str:
        """completed | diverged | failed | interrupted | running | pending, from the run's own files.

        ``running`` while a process writes the run; a run.json left ``running`` by a process
        that is gone (the run directory's lock is free: see :func:`clrctl.runs.rundir.is_live`)
        counts as ``interrupted``: it resumes from its checkpoint — or ``failed`` when the sweep
        recorded after it that the attempt crashed its worker or ran past ``--timeout`` (a
        rerun resumes a failed run too)."""
        run_json = self.run_path(ref) / "run.json"
        if run_json.is_file():
            try:
                status = str(read_json(run_json).get("status", "failed"))
            except InputError:
                return "failed"
            if status == "running" and not is_live(self.run_path(ref)):
                status = "interrupted"
            if status == "interrupted" and self._failed_since(ref, run_json):
                return "failed"  # it crashed its worker or ran past --timeout after run.json said so
            return status
        exit_file = self.exit_path(ref)
        if exit_file.is_file():
            try:
                return str(read_json(exit_file).get("status", "failed"))
            except InputError:
                return "failed"
        return "pending"

    def _failed_since(self, ref: RunRef, run_json: Path) -> bool:
        """The last attempt's exit record says ``failed`` and is newer than run.json."""
        exit_file = self.exit_path(ref)
        try:
            if exit_file.stat().st_mtime_ns < run_json.stat().st_mtime_ns:
                return False
            return read_json(exit_file).get("status") == "failed"
        except (OSError, InputError):
            return False

    def clear_unstarted(self, ref: RunRef) -> None:
        """A run directory without run.json holds nothing worth keeping (killed before it started)."""
        path = self.run_path(ref)
        if path.is_dir() and not (path / "run.json").is_file() and not is_live(path):
            shutil.rmtree(path)

    def record_exit(self, ref: RunRef, status: str, code: int, message: str, **extra: Any) -> None:
        write_json_atomic(self.exit_path(ref), {"status": status, "exit_code": code, "message": message,
                                                "time": utc_now(), **extra})

    def exit_message(self, ref: RunRef) -> str:
        try:
            return str(read_json(self.exit_path(ref)).get("message", ""))
        except InputError:
            return ""

    # -- the index ------------------------------------------------------------------
    def write_index(self, plan: Plan, argv: list[str]) -> dict[str, Any]:
        with self._index_lock():
            index = self.index(plan, argv)
            write_json_atomic(self.path / "sweep.json", index)
        return index

    def index(self, plan: Plan, argv: list[str]) -> dict[str, Any]:
        previous = self._previous_index()
        points, counts = [], {}
        for point in plan.points:
            runs = [{"seed": ref.seed, "path": ref.rel, "status": self.run_status(ref)} for ref in point.runs()]
            status = point_status([r["status"] for r in runs])
            counts[status] = counts.get(status, 0) + 1
            points.append({"name": point.name, "overrides": point.overrides, "included": point.included,
                           "seeds": point.seeds, "status": status, "path": point.rel,
                           "config": f"configs/{point.name}.yaml", "runs": runs})
        return {
            "schema_version": SCHEMA_VERSION, "kind": "sweep", "name": plan.name,
            "config": plan.source, "overrides": plan.overrides, "grid": plan.grid, "include": plan.include,
            "seeds": plan.seeds, "argv": argv, "created": previous.get("created") or utc_now(),
            "updated": utc_now(), "counts": counts, "points": points,
        }

    def _previous_index(self) -> dict[str, Any]:
        try:
            return read_json(self.path / "sweep.json")
        except InputError:
            return {}

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: one writer at a time is the user's job
            yield
            return
        with open(self.path / "locks" / "index.flock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def point_status(statuses: list[str]) -> str:
    """One status for a point from its runs' statuses (the worst one wins)."""
    for status in ("failed", "diverged", "running", "interrupted", "pending"):
        if status in statuses:
            if status == "pending" and any(s != "pending" for s in statuses):
                return "partial"
            return status
    return "completed"


def _differing_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += _differing_keys(x, y, f"{prefix}{key}.")
        elif x != y:
            keys.append(f"{prefix}{key}")
    return keys


def _grid_change(previous: dict[str, Any], plan: Plan) -> str:
    """What differs between an index's grid and the plan's, for the refusal's one line."""
    before, now = previous.get("grid") or {}, plan.grid
    changes = [f"{key}: {_values(before.get(key))} there, {_values(now.get(key))} now"
               for key in list(before) + [k for k in now if k not in before] if before.get(key) != now.get(key)]
    if previous.get("include") != plan.include:
        changes.append("sweep.include differs")
    if previous.get("seeds") != plan.seeds:
        changes.append(f"seeds: {previous.get('seeds')} there, {plan.seeds} now")
    if not changes:  # e.g. an index without a grid: name the points themselves
        names = {p.get("name") for p in previous.get("points", [])}
        added = [p.name for p in plan.points if p.name not in names]
        changes.append(f"new points: {', '.join(added[:3])}" if added else "fewer points")
    return "; ".join(changes)


def _values(values: Any) -> str:
    return "not swept" if values is None else yaml.safe_dump(values, default_flow_style=True, width=10**6).strip()
