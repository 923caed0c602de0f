"""``clrctl export mlflow``: existing run directories as MLflow runs, through ``MlflowClient``.

A run directory becomes one MLflow run (a seed group: a parent run, one child per seed):

- params: the resolved ``config.yaml``, flattened to dotted keys (``policy.bounds`` =
  ``[0.02, 0.1]``; lists of sections by index: ``stages.0.name``); values longer than
  MLflow's limit are cut (the whole file is an artifact);
- metrics by step: each number of ``metrics.csv`` (``val_*`` at ``step + 1``: measured after
  that step's update, as the TensorBoard export draws them) and of ``epochs.csv`` as
  ``epoch/<column>`` at the epoch's last step; ``summary.json``'s numbers at the last step
  (nested keys dotted: ``suggestion.max_lr``); a seed group's parent gets their median over
  its seeds;
- artifacts: ``plots/`` and ``config.yaml``; tags: the run's status, kind, seed, host.

Exporting again finds the run by the tag ``clrctl.run_id`` (``run.json``'s ``id``, else a
hash of the directory's resolved path and start time) in the experiment and adds only what
is new: the rows after the last step exported (tags ``clrctl.exported.*``), params not yet
there, changed final metrics. Timestamps are derived from the run's files (start time plus
elapsed seconds), so a batch sent twice (an export killed half-way) holds the same values.
Everything is sent with ``log_batch`` in chunks within MLflow's batch limits.

The ``mlflow`` package is the extra ``clrctl[mlflow]``; :func:`require` checks for it.
Reads the directories through :mod:`clrctl.files.atomic`; no torch.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from clrctl.errors import InputError, warn
from clrctl.files.atomic import read_csv, read_json

INSTALL = "pip install 'clrctl[mlflow]'"
DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow's own default tracking URI
ID_TAG = "clrctl.run_id"
STATUS = {"completed": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "interrupted": "KILLED",
          "running": "RUNNING"}
AFTER_STEP = ("val_loss", "val_acc")  # metrics.csv columns measured after that step's update
NOT_METRICS = ("step", "epoch", "stage")
SOURCES = {"metrics": ("metrics.csv", ""), "epochs": ("epochs.csv", "epoch/")}  # source: (file, key prefix)
# MLflow's limits (mlflow.utils.validation), should an older or newer MLflow not name them
LIMITS = {"MAX_PARAM_VAL_LENGTH": 6000, "MAX_TAG_VAL_LENGTH": 8000, "MAX_ENTITY_KEY_LENGTH": 250,
          "MAX_METRICS_PER_BATCH": 1000, "MAX_PARAMS_TAGS_PER_BATCH": 100}


def require(command: str = "export mlflow") -> None:
    """One line (exit 2) when the ``mlflow`` package is missing."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise InputError(f"{command}: the mlflow package is not installed; install it with: {INSTALL}")


Point = tuple  # (key, value, timestamp ms, step): one MLflow metric value


@dataclass
class Record:
    """One MLflow run to write, read from a run directory's files (plain data)."""

    uid: str
    name: str
    path: Path
    status: str  # clrctl's: completed, diverged, failed, interrupted, running
    start_ms: int
    end_ms: Optional[int]
    params: dict[str, str]
    rows: dict[str, list[tuple[int, list[Point]]]]  # source ("metrics", "epochs"): per CSV row, its step and points
    finals: dict[str, float]
    final_step: int
    tags: dict[str, str]
    artifacts: list[Path]
    children: list["Record"] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# Reading a run directory


def read(node) -> Record:
    """The record of a :class:`clrctl.runs.targets.Node` (a run, or a group and its seeds)."""
    if node.kind == "group":
        return _group(node)
    return _run(node.path, node.config, node.live, node.tags)


def _run(path: Path, config: Optional[Path], live: Optional[str], tags: dict[str, str]) -> Record:
    info = read_json(path / "run.json")
    summary = read_json(path / "summary.json") if (path / "summary.json").is_file() else {}
    status = str(info.get("status") or summary.get("status") or "failed")
    if status == "running" and not live:
        status = "interrupted"  # left "running" by a process that is gone (as the sweep counts it)
    start = _ms(info.get("start_time")) or 0
    uid = str(info.get("id") or _stable_id(path, info.get("start_time")))
    record = _record(path, uid, path.name, status, start, _ms(info.get("end_time")), config, summary,
                     info.get("kind") == "train", complete=not live)
    record.tags.update(tags)
    record.tags.update(_run_tags(info))
    for entry in summary.get("per_seed") or []:  # a range test of several seeds: seeds/seed-K/
        child = path / str(entry.get("path", ""))
        if child != path and (child / "summary.json").is_file():
            seed = read_json(child / "summary.json")
            record.children.append(_record(child, f"{uid}/{entry['path']}", child.name, status, start,
                                           record.end_ms, None, seed, False, complete=True))
    return record


def _record(path: Path, uid: str, name: str, status: str, start: int, end: Optional[int],
            config: Optional[Path], summary: dict[str, Any], train: bool, complete: bool) -> Record:
    rows = {source: _rows(path / file, complete) for source, (file, _) in SOURCES.items()}
    clock = _clock(start, rows["epochs"], summary)
    timed = {source: _values(path / SOURCES[source][0], found, clock, SOURCES[source][1], train and source == "metrics")
             for source, found in rows.items()}
    finals = _numbers(summary)
    steps = [point[3] for found in timed.values() for _, points in found for point in points]
    artifacts = [p for p in (path / "plots", path / "config.yaml") if p.exists()]
    return Record(uid, name, path, status, start, end, params(config), timed, finals,
                  int(summary.get("steps") or max(steps, default=0)), {"clrctl.path": str(path.resolve())},
                  artifacts)


def _group(node) -> Record:
    """A seed group: a parent with the group's config and its seeds' median final metrics."""
    group = read_json(node.path / "group.json")
    children = [_run(child.path, child.config, child.live, {}) for child in node.children]
    statuses = {child.status for child in children}
    status = next((s for s in ("running", "failed", "diverged", "interrupted") if s in statuses), "completed")
    finals: dict[str, list[float]] = {}
    for child in children:
        for key, value in child.finals.items():
            finals.setdefault(key, []).append(value)
    ends = [child.end_ms for child in children]
    tags = {"clrctl.path": str(node.path.resolve()), "clrctl.kind": "group",
            "clrctl.seeds": json.dumps(group.get("seeds")), **node.tags}
    return Record(
        uid=str(group.get("id") or _stable_id(node.path, group.get("created"))), name=node.path.name,
        path=node.path, status=status,
        start_ms=min([c.start_ms for c in children] or [_ms(group.get("created")) or 0]),
        end_ms=None if status == "running" or None in ends else max(ends, default=None),
        params=params(node.config), rows={}, finals={k: statistics.median(v) for k, v in finals.items()},
        final_step=max([c.final_step for c in children] or [0]), tags=tags,
        artifacts=[p for p in (node.config,) if p is not None and p.is_file()], children=children)


def _rows(path: Path, complete: bool) -> list[dict[str, str]]:
    """A CSV's rows; while the run is written, not a last line that is cut short."""
    if not path.is_file():
        return []
    rows = read_csv(path)
    if not complete and rows and not path.read_bytes().endswith(b"\n"):
        rows.pop()
    return rows


def _values(path: Path, rows: list[dict[str, str]], clock, prefix: str, train: bool) -> list[tuple[int, list[Point]]]:
    """Per CSV row: its step and its points (``val_*`` of a training run at ``step + 1``)."""
    out = []
    for number, row in enumerate(rows, start=2):
        try:
            step = int(row.get("step") or "")
        except ValueError:
            raise InputError(f"{path}: line {number}: step {str(row.get('step'))[:40]!r} is not a whole number") from None
        points = []
        for key, text in row.items():
            value = None if key in NOT_METRICS else _number(text)
            if value is not None:
                at = step + 1 if train and key in AFTER_STEP else step
                points.append((prefix + key, value, clock(at), at))
        out.append((step, points))
    return out


def _number(value: Any) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _clock(start_ms: int, epochs: list[dict[str, str]], summary: dict[str, Any]):
    """A step's time (ms): the run's start plus the elapsed seconds that ``epochs.csv`` and the
    summary record, interpolated linearly between them."""
    known = [(0, 0.0)]
    for row in epochs + [summary]:
        step, elapsed = _number(row.get("step", row.get("steps"))), _number(row.get("elapsed_s"))
        if step is not None and elapsed is not None and step > known[-1][0] and elapsed >= known[-1][1]:
            known.append((int(step), elapsed))

    def at(step: int) -> int:
        for (s0, e0), (s1, e1) in zip(known, known[1:]):
            if step <= s1:
                return start_ms + round(1000 * (e0 + (e1 - e0) * (step - s0) / (s1 - s0)))
        return start_ms + round(1000 * known[-1][1])

    return at


def params(config: Optional[Path]) -> dict[str, str]:
    """The resolved config as MLflow params: dotted keys, scalars as JSON (strings as they are)."""
    if config is None or not config.is_file():
        return {}
    from clrctl.config import yamlsafe

    found = yamlsafe.load(config.read_text(encoding="utf-8"))
    if not isinstance(found, dict):
        return {}
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in _dotted(found).items()}


def _dotted(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted keys; a list of sections by index, any other list whole."""
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _dotted(item, f"{prefix}{key}.").items()}
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        return {k: v for i, item in enumerate(value) for k, v in _dotted(item, f"{prefix}{i}.").items()}
    return {prefix[:-1]: value}


def _numbers(value: Any, prefix: str = "") -> dict[str, float]:
    """The finite numbers of nested dicts, by dotted key (not bools, not lists)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _numbers(item, f"{prefix}{key}.").items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return {prefix[:-1]: float(value)}
    return {}


def _run_tags(info: dict[str, Any]) -> dict[str, str]:
    tags = {"clrctl.kind": info.get("kind"), "clrctl.seed": info.get("seed"), "clrctl.device": info.get("device"),
            "clrctl.host": info.get("host"), "clrctl.version": (info.get("versions") or {}).get("clrctl"),
            "clrctl.command": " ".join(map(str, info.get("argv") or [])) or None,
            "mlflow.source.git.commit": (info.get("git") or {}).get("commit")}
    return {key: str(value) for key, value in tags.items() if value is not None}


def _stable_id(path: Path, started: Any) -> str:
    return hashlib.sha256(f"{Path(path).resolve()}\n{started}".encode()).hexdigest()[:16]


def _ms(stamp: Any) -> Optional[int]:
    try:
        return round(_dt.datetime.fromisoformat(str(stamp)).timestamp() * 1000)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------
# Writing to MLflow


def export(targets: Iterable, uri: str, experiment: Optional[str] = None) -> Iterable[tuple[Record, str, bool, str]]:
    """Export each :class:`clrctl.runs.targets.Target` (a run, a group, a sweep) to ``uri``,
    into ``experiment`` or the target's own; yields (record, MLflow run id, whether it is new,
    experiment name) per MLflow run. MLflow's errors become one InputError line."""
    from mlflow.exceptions import MlflowException

    try:
        writer = Exporter(uri)
        for target in targets:
            name = experiment or target.experiment
            experiment_id = writer.experiment(name)
            for node in target.nodes:
                for record, run_id, created in writer.export(read(node), experiment_id):
                    yield record, run_id, created, name
    except MlflowException as err:
        raise InputError(f"mlflow ({uri}): {_first_line(err)}") from None


class Exporter:
    """Writes records to one tracking URI, each MLflow run found again by its ``clrctl.run_id``."""

    def __init__(self, uri: str):
        import logging
        import os

        import mlflow.utils.validation as validation
        from mlflow.tracking import MlflowClient

        if "MLFLOW_LOGGING_LEVEL" not in os.environ:  # ("Creating initial MLflow database tables..." on stderr)
            logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=uri)
        self.limit = {key: getattr(validation, key, value) for key, value in LIMITS.items()}

    def experiment(self, name: str) -> str:
        """The id of experiment ``name``, created if there is none."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name)
            except MlflowException:  # (created meanwhile by another export)
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            raise InputError(f"--experiment {name}: deleted in MLflow; restore it (mlflow experiments restore) "
                             "or export to another --experiment")
        return found.experiment_id

    def export(self, record: Record, experiment_id: str, parent: Optional[str] = None) -> list[tuple[Record, str, bool]]:
        run, created = self._find_or_create(record, experiment_id, parent)
        self._write(record, run)
        out = [(record, run.info.run_id, created)]
        for child in record.children:
            out += self.export(child, experiment_id, run.info.run_id)
        return out

    def _find_or_create(self, record: Record, experiment_id: str, parent: Optional[str]):
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`{ID_TAG}` = '{record.uid}'",
                                        max_results=2, order_by=["attributes.start_time ASC"])
        if found:
            if len(found) > 1:
                warn(f"{record.path}: {len(found)} MLflow runs carry {ID_TAG} {record.uid}; updating the first")
            return found[0], False
        tags = {ID_TAG: record.uid, **({"mlflow.parentRunId": parent} if parent else {})}
        return self.client.create_run(experiment_id, start_time=record.start_ms, tags=tags, run_name=record.name), True

    def _write(self, record: Record, run) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run_id, data = run.info.run_id, run.data
        params = [Param(k, v) for k, v in self._params(record, data.params).items()]
        points, exported = [], {}
        for source, rows in record.rows.items():
            done = int(data.tags.get(f"clrctl.exported.{source}", -1))
            new = [(step, found) for step, found in rows if step > done]
            points += [point for _, found in new for point in found]
            exported[f"clrctl.exported.{source}"] = str(new[-1][0] if new else done)
        end = record.end_ms or (max(p[2] for p in points) if points else record.start_ms)
        points += [(k, v, end, record.final_step) for k, v in record.finals.items() if data.metrics.get(k) != v]
        tags = {**record.tags, "clrctl.status": record.status, **exported}
        cut = self.limit["MAX_TAG_VAL_LENGTH"]
        self._batches(run_id, "params", params, self.limit["MAX_PARAMS_TAGS_PER_BATCH"])
        self._batches(run_id, "metrics", [Metric(*p) for p in points], self.limit["MAX_METRICS_PER_BATCH"])
        self._batches(run_id, "tags", [RunTag(k, v[:cut]) for k, v in tags.items()], self.limit["MAX_PARAMS_TAGS_PER_BATCH"])
        for artifact in record.artifacts:
            if artifact.is_dir():
                self.client.log_artifacts(run_id, str(artifact), artifact.name)
            else:
                self.client.log_artifact(run_id, str(artifact))
        if record.status == "running":
            self.client.update_run(run_id, status=STATUS["running"])
        else:
            self.client.set_terminated(run_id, STATUS.get(record.status, "FAILED"), end_time=record.end_ms)

    def _params(self, record: Record, logged: dict[str, str]) -> dict[str, str]:
        """The params not yet logged, within MLflow's limits (a value logged once cannot change)."""
        longest, key_limit = self.limit["MAX_PARAM_VAL_LENGTH"], self.limit["MAX_ENTITY_KEY_LENGTH"]
        out, cut = {}, []
        for key, value in record.params.items():
            if len(key) > key_limit:
                warn(f"{record.path}: param {key[:60]}… left out (longer than MLflow's {key_limit}-character keys)")
                continue
            if len(value) > longest:
                value, _ = value[: longest - 1] + "…", cut.append(key)
            if key not in logged:
                out[key] = value
            elif logged[key] != value:
                warn(f"{record.path}: param {key} changed since it was exported (MLflow keeps a param's first value)")
        if cut:
            warn(f"{record.path}: {', '.join(cut[:3])} cut to MLflow's {longest} characters (config.yaml, an artifact, "
                 "holds them whole)")
        return out

    def _batches(self, run_id: str, kind: str, items: list, size: int) -> None:
        for first in range(0, len(items), size):
            self.client.log_batch(run_id, **{kind: items[first:first + size]})


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", None) or err).strip().splitlines()
    return (text[0] if text else err.__class__.__name__)[:300]
