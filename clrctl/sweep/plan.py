"""A sweep's plan: every point and seed, each with its full, validated config.

The plan is built (and every point validated, ``bounds.from`` resolved) before any directory
exists, so a bad key or value in any point is one :class:`ConfigError` naming the point
(exit 2) and leaves nothing behind.

Where the grid comes from: the config's ``sweep:`` block (``grid``, ``include``, ``seeds``),
then the command line. A ``--grid KEY=…`` replaces the block's values for KEY; a plain override
``KEY=value`` pins KEY for every point (and removes it from the block's grid); ``--seeds``
replaces ``sweep.seeds``. Torch-free.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pydantic import ValidationError

from clrctl.config.messages import describe_validation_error
from clrctl.config.schema import Config, SweepConfig, apply_override, locate_paths, read_yaml, validate
from clrctl.errors import ConfigError, InputError
from clrctl.runs.bounds import resolve_bounds_from
from clrctl.config.seeds import parse_seeds
from clrctl.sweep.grid import expand, parse_grid_option, point_names, set_key


@dataclass(frozen=True)
class RunRef:
    """One run of a sweep: a point and a seed, the unit that is claimed and run."""

    point: str
    seed: int
    rel: str  # the run directory, relative to the sweep directory

    @property
    def id(self) -> str:
        return self.rel.removeprefix("points/").replace("/", ".")


@dataclass
class Point:
    name: str
    overrides: dict[str, Any]  # {dotted.key: value}: what sets this point apart
    config: dict[str, Any]  # the full, resolved config (seed: the first of ``seeds``)
    seeds: list[int]
    included: bool = False  # an extra point from sweep.include, not from the grid

    @property
    def rel(self) -> str:
        return f"points/{self.name}"

    @property
    def is_group(self) -> bool:
        return len(self.seeds) > 1

    def runs(self) -> list[RunRef]:
        if not self.is_group:
            return [RunRef(self.name, self.seeds[0], self.rel)]
        return [RunRef(self.name, s, f"{self.rel}/seed-{s}") for s in self.seeds]


@dataclass
class Plan:
    source: str
    overrides: list[str]
    grid: dict[str, list[Any]]
    include: list[dict[str, Any]]
    seeds: Optional[str]
    points: list[Point] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.points[0].config.get("name", "run")

    def runs(self) -> list[RunRef]:
        return [ref for point in self.points for ref in point.runs()]

    def point(self, name: str) -> Point:
        return next(p for p in self.points if p.name == name)


def build_plan(config: Path, overrides: list[str], grid_options: list[str], seeds: Optional[str]) -> Plan:
    """Read the config and its ``sweep:`` block, apply the command line, validate every point."""
    data = read_yaml(config)
    block = _sweep_block(data.pop("sweep", None))
    grid = dict(block.grid)
    for override in overrides:
        apply_override(data, override)
        grid.pop(override.partition("=")[0].strip(), None)  # a plain override pins the key
    locate_paths(data, Path(config).parent)  # as load_config does: the working directory, then the config's
    for option in grid_options:
        key, values = parse_grid_option(option)
        grid.pop(key, None)
        grid[key] = values
    if block.seeds is not None and seeds is None:
        seeds = ",".join(map(str, block.seeds)) if isinstance(block.seeds, list) else str(block.seeds)
    if seeds is not None and "seed" in grid:
        raise InputError("give the seeds with --seeds (or sweep.seeds), not as a grid key 'seed'")
    plan = Plan(str(config), list(overrides), grid, list(block.include), seeds)
    raw_points = expand(grid, block.include)
    for name, values, included in zip(point_names(raw_points), raw_points,
                                      [False] * (len(raw_points) - len(block.include)) + [True] * len(block.include)):
        plan.points.append(_point(data, name, values, seeds, included))
    return plan


def _sweep_block(block: Any) -> SweepConfig:
    try:
        return SweepConfig.model_validate(block or {})
    except ValidationError as err:
        raise ConfigError(f"sweep.{describe_validation_error(err, block, Config)}") from None


def _point(base: dict[str, Any], name: str, values: dict[str, Any], seeds: Optional[str], included: bool) -> Point:
    what = "point " + name
    data = copy.deepcopy(base)
    try:
        for key, value in values.items():
            set_key(data, key, value, what)
        config = resolve_bounds_from(validate(data))
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if message.startswith(what) else f"{what}: {message}") from None
    seed_list = parse_seeds(seeds, config.seed) if seeds is not None else [config.seed]
    resolved = config.to_dict()
    resolved["seed"] = seed_list[0]
    return Point(name, dict(values), resolved, seed_list, included)
