"""What a path given to ``clrctl export mlflow`` holds, as plain data for the exporter
(:mod:`clrctl.track.mlflow`): a run directory, a seed group (``group.json`` + ``seed-K/``),
or a sweep directory (``sweep.json`` + ``points/<point>/``, each point a run or a seed group:
see :mod:`clrctl.sweep.store`); and whether each run is still being written (its lock is
held: :func:`clrctl.runs.rundir.is_live`). Reads only; never imports torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from clrctl.errors import InputError
from clrctl.runs.rundir import holder, is_live, read_json


@dataclass
class Node:
    """One MLflow run to be: a run directory (``run.json``), or a seed group whose
    ``children`` are its seeds' runs. ``config``: where its params come from."""

    path: Path
    kind: str  # "run" | "group"
    config: Optional[Path]
    live: Optional[str] = None  # "pid N on HOST" while a process still writes it
    tags: dict[str, str] = field(default_factory=dict)
    children: list["Node"] = field(default_factory=list)


@dataclass
class Target:
    """A path of the command line: its runs, and the experiment they go to by default."""

    path: Path
    experiment: str
    nodes: list[Node]
    skipped: list[str] = field(default_factory=list)  # a sweep's points that have not started


def target(path: Path) -> Target:
    """The runs ``path`` holds; one InputError line for anything else."""
    path = Path(path)
    if (path / "sweep.json").is_file():
        return _sweep(path)
    node = _node(path, tags={})
    if node is None:
        raise InputError(f"{path}: not a run directory, seed group or sweep (no run.json, group.json or sweep.json)")
    name = _config_name(node.config)
    if node.kind == "group":
        name = name or read_json(path / "group.json").get("name")
    return Target(path, str(name or path.name), [node])


def _node(path: Path, tags: dict[str, str], config: Optional[Path] = None) -> Optional[Node]:
    if (path / "group.json").is_file():
        group = read_json(path / "group.json")
        children = [_run(path / str(rel), tags) for rel in group.get("runs") or []]
        own = path / "config.yaml"
        return Node(path, "group", own if own.is_file() else config, tags=tags,
                    children=[c for c in children if c is not None])
    return _run(path, tags)


def _run(path: Path, tags: dict[str, str]) -> Optional[Node]:
    if not (path / "run.json").is_file():
        return None
    live = holder(path) if is_live(path) else None
    return Node(path, "run", path / "config.yaml", live=live, tags=tags)


def _sweep(path: Path) -> Target:
    index = read_json(path / "sweep.json")
    if index.get("kind") != "sweep" or not isinstance(index.get("points"), list):
        raise InputError(f"{path}/sweep.json: not a clrctl sweep index")
    nodes, skipped = [], []
    for point in index["points"]:
        if not isinstance(point, dict) or not point.get("path"):
            continue
        tags = {"clrctl.sweep": path.name, "clrctl.point": str(point.get("name"))}
        config = path / str(point["config"]) if point.get("config") else None
        node = _node(path / str(point["path"]), tags, config)
        if node is None or (node.kind == "group" and not node.children):
            skipped.append(str(point.get("name")))
        else:
            nodes.append(node)
    return Target(path, path.name, nodes, skipped)


def _config_name(config: Optional[Path]) -> Optional[str]:
    if config is None or not config.is_file():
        return None
    import yaml

    try:
        found = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return str(found["name"]) if isinstance(found, dict) and found.get("name") else None
