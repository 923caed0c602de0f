"""A search space: ``--param KEY=DIST`` -> distributions, checked before anything runs.

``loguniform(a, b)``, ``uniform(a, b)``, ``int(a, b)`` (both ends included) and
``choice(v1, v2, …)`` (each value parsed as YAML, split as ``--grid`` values are);
``loguniform(from: RUN)`` (a range test's usable window) and ``ratio(a, b, of: KEY)`` (r × the
value of KEY, r log-uniform in [a, b]: base_lr as a share of max_lr). A key
is a dotted path into the config; a number addresses a list element (``policy.bounds.1``).
The key must name something the resolved config has (its defaults included), so a typo is
refused here (exit 2), not found as a failed trial. Torch-free; optuna is imported only to
build its distributions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional

import yaml

from clrctl.config import yamlsafe
from clrctl.errors import InputError
from clrctl.sweep.grid import split_values

KINDS = ("loguniform", "uniform", "int", "choice", "ratio")
_CALL = re.compile(r"^\s*([A-Za-z_]+)\s*\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Param:
    key: str
    kind: str  # loguniform | uniform | int | choice | ratio
    args: tuple[Any, ...]  # (low, high), the choices, or (low, high, of) for a ratio
    source: Optional[str] = None  # loguniform(from: RUN): the range test its bounds came from

    @property
    def of(self) -> Optional[str]:
        """ratio(a, b, of: KEY): the key whose value this one is a multiple of."""
        return self.args[2] if self.kind == "ratio" else None

    def distribution(self):
        """The Optuna distribution (choices are stored as their YAML text: Optuna's
        categorical values must be plain scalars, a list such as [0.01, 0.1] is not)."""
        from optuna import distributions as d

        if self.kind in ("loguniform", "ratio"):
            return d.FloatDistribution(self.args[0], self.args[1], log=True)
        if self.kind == "uniform":
            return d.FloatDistribution(self.args[0], self.args[1])
        if self.kind == "int":
            return d.IntDistribution(self.args[0], self.args[1])
        return d.CategoricalDistribution([dump(v) for v in self.args])

    def value(self, sampled: Any) -> Any:
        """The config value of a sampled Optuna value."""
        return yamlsafe.load(sampled) if self.kind == "choice" else sampled

    def grid_values(self) -> list[Any]:
        """The values ``--search grid`` goes through (choices, or every integer of int(a, b))."""
        if self.kind == "choice":
            return [dump(v) for v in self.args]
        if self.kind == "int":
            return list(range(self.args[0], self.args[1] + 1))
        raise InputError(f"--param {self.key}: --search grid needs choice(…) or int(a, b), not {self.kind}(…)")

    def spec(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "args": list(self.args),
                **({"from": self.source} if self.source else {})}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Param":
        return cls(spec["key"], spec["kind"], tuple(spec["args"]), spec.get("from"))


def dump(value: Any) -> str:
    """A value as YAML flow text: ``[0.01, 0.1]``, ``2 epochs``, ``null``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def parse_param(text: str) -> Param:
    """One ``--param KEY=DIST``; a bad one is one line naming it (InputError, exit 2)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    where = f"--param {text!r}"
    if not sep or not key or any(not part for part in key.split(".")):
        raise InputError(f"{where}: expected KEY=DIST, e.g. 'policy.bounds.1=loguniform(0.01, 1.0)'")
    match = _CALL.match(raw)
    if not match or match.group(1) not in KINDS:
        raise InputError(f"{where}: expected one of {', '.join(k + '(…)' for k in KINDS)}")
    kind, inner = match.groups()
    if not inner.strip():
        raise InputError(f"{where}: {kind} needs {'at least one value' if kind == 'choice' else 'two bounds'}")
    try:
        pieces = split_values(inner)
        values = [yamlsafe.load(p) for p in pieces if p]
    except (ValueError, yaml.YAMLError) as err:
        raise InputError(f"{where}: cannot parse the values ({err})") from None
    if any(not p for p in pieces):
        raise InputError(f"{where}: empty value (two commas in a row, or a trailing comma?)")
    if kind == "loguniform" and len(values) == 1 and isinstance(values[0], dict) and set(values[0]) == {"from"}:
        return _from_range_test(key, where, values[0]["from"])
    if kind == "ratio":
        return _ratio(key, where, values)
    if kind == "choice":
        if not values:
            raise InputError(f"{where}: choice needs at least one value")
        if len({dump(v) for v in values}) != len(values):
            raise InputError(f"{where}: choice repeats a value")
        return Param(key, kind, tuple(values))
    if len(values) != 2:
        raise InputError(f"{where}: {kind} takes two bounds (low, high), got {len(values)}")
    low, high = values
    if kind == "int":
        if not all(type(v) is int for v in values):
            raise InputError(f"{where}: int bounds must be integers")
    elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise InputError(f"{where}: {kind} bounds must be finite numbers")
    if not low < high:
        raise InputError(f"{where}: empty range (low {low} must be below high {high})")
    if kind == "loguniform" and low <= 0:
        raise InputError(f"{where}: loguniform needs low > 0 (got {low})")
    if kind != "int":
        low, high = float(low), float(high)
    return Param(key, kind, (low, high))


def _from_range_test(key: str, where: str, run: Any) -> Param:
    """``loguniform(from: RUN)``: the range test's usable window (runs/bounds.py says which)."""
    from clrctl.errors import ConfigError
    from clrctl.runs.bounds import usable_window

    if not isinstance(run, str) or not run.strip():
        raise InputError(f"{where}: from: needs the path of a range-test run directory")
    try:
        low, high = usable_window(run, where)
    except ConfigError as err:
        raise InputError(str(err)) from None
    return Param(key, "loguniform", (low, high), run)


def _ratio(key: str, where: str, values: list[Any]) -> Param:
    """``ratio(a, b, of: KEY)``: this key is r × KEY's value, r log-uniform in [a, b]."""
    shape = f"{where}: expected ratio(low, high, of: KEY), e.g. 'policy.bounds.0=ratio(0.1, 0.5, of: policy.bounds.1)'"
    if len(values) != 3 or not isinstance(values[2], dict) or set(values[2]) != {"of"} \
            or not isinstance(values[2]["of"], str):
        raise InputError(shape)
    low, high = values[0], values[1]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
        raise InputError(f"{where}: ratio bounds must be finite numbers")
    if not 0 < low < high:
        raise InputError(f"{where}: ratio needs 0 < low < high (got {low}, {high})")
    return Param(key, "ratio", (float(low), float(high), values[2]["of"].strip()))


def parse_space(texts: list[str], resolved: dict[str, Any]) -> list[Param]:
    """Every ``--param``, each key checked against the resolved base config; a ratio's ``of``
    must be another (non-ratio) param or a number of the config."""
    params: list[Param] = []
    for text in texts:
        param = parse_param(text)
        if any(p.key == param.key for p in params):
            raise InputError(f"--param {param.key}: given twice")
        problem = missing_key(resolved, param.key)
        if problem:
            raise InputError(f"--param {text!r}: {problem}")
        params.append(param)
    keys = {p.key: p for p in params}
    for param in params:
        if param.kind != "ratio":
            continue
        where = f"--param {param.key}=ratio(…, of: {param.of})"
        if param.of == param.key:
            raise InputError(f"{where}: a key cannot be a ratio of itself")
        if param.of in keys:
            if keys[param.of].kind == "ratio":
                raise InputError(f"{where}: {param.of} is itself a ratio; give it a range of its own")
            continue
        problem = missing_key(resolved, param.of)
        if problem:
            raise InputError(f"{where}: {problem}")
        if not isinstance(lookup(resolved, param.of), (int, float)) or isinstance(lookup(resolved, param.of), bool):
            raise InputError(f"{where}: {param.of} is not a number in the config (nor a --param)")
    if not params:
        raise InputError("nothing to search: give --param KEY=DIST (e.g. 'policy.bounds.1=loguniform(0.01, 1.0)')")
    return params


def missing_key(data: Any, key: str) -> str:
    """Why ``key`` addresses nothing in ``data`` (a resolved config), or ""."""
    node, parts = data, key.split(".")
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return f"{part!r} is not an index of {'.'.join(parts[:i]) or 'the config'} (a list of {len(node)})"
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                return f"unknown key {here}"
            node = node[part]
        else:
            return f"{'.'.join(parts[:i])} is not a section"
    return ""


def lookup(data: Any, key: str) -> Any:
    """``data[key]`` for a dotted key (list indices included); the key must exist."""
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def config_values(params: list[Param], sampled: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The config values of a trial's sampled values: a choice's YAML text parsed, a ratio
    multiplied by the value of its ``of`` key (the trial's, else the base config's)."""
    values = {p.key: p.value(sampled[p.key]) for p in params if p.key in sampled and p.kind != "ratio"}
    for p in params:
        if p.kind == "ratio" and p.key in sampled:
            values[p.key] = float(sampled[p.key]) * float(values[p.of] if p.of in values else lookup(base, p.of))
    return {p.key: values[p.key] for p in params if p.key in values}


def _short_float(value: Any) -> Any:
    return float(f"{value:.4g}") if isinstance(value, float) and math.isfinite(value) else value


def trial_name(number: int, values: dict[str, Any]) -> str:
    """``3-bounds.1-0.0412_stepsize-2epochs``: the trial's number, then its values."""
    from clrctl.sweep.grid import _key_slug, check_component, short_keys, slug

    short = short_keys(list(values))
    for key, name in short.items():  # policy.bounds.1 -> bounds.1, not 1
        parts = key.split(".")
        if name.split(".")[0].isdigit() and len(parts) > len(name.split(".")):
            short[key] = ".".join(parts[-len(name.split(".")) - 1:])
    tail = "_".join(f"{_key_slug(short[k])}-{slug(_short_float(v))}" for k, v in values.items())
    return check_component(f"{number}-{tail}"[:150] if tail else str(number))
