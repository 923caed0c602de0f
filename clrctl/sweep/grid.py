"""Grid syntax: ``--grid KEY=V1,V2,…`` -> values, grids and extra points -> the list of points.

The syntax is Hydra multirun's: values are split on commas that are *not* inside brackets,
braces or quotes, and each value is parsed as YAML, so ``policy.bounds=[0.01,0.1],[0.02,0.2]``
is two values (two lists) and ``policy.stepsize=1 epochs,2 epochs`` is two strings. A point is
an ordered mapping ``{dotted.key: value}``; its name is a readable, filesystem-safe slug of its
values (``name-triangular2_stepsize-2epochs``). Torch-free.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

import yaml

from clrctl.config import yamlsafe
from clrctl.errors import ConfigError, InputError

_OPEN, _CLOSE = "[{(", "]})"
_SAFE = re.compile(r"[^A-Za-z0-9.+\-]+")
_SAFE_KEY = re.compile(r"[^A-Za-z0-9._+\-]+")
_SAFE_NAME = re.compile(r"[A-Za-z0-9._+\-]+")


def split_values(text: str) -> list[str]:
    """``a,[b,c],'d,e'`` -> ``['a', '[b,c]', "'d,e'"]``: commas at bracket depth 0 split."""
    parts, current, depth, quote = [], [], 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced {ch!r}")
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    if depth or quote:
        raise ValueError("unbalanced brackets or quotes")
    parts.append("".join(current))
    return [p.strip() for p in parts]


def parse_grid_option(text: str) -> tuple[str, list[Any]]:
    """One ``--grid KEY=V1,V2,…`` -> (key, [values parsed as YAML])."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise InputError(f"--grid {text!r}: expected KEY=V1,V2,… (e.g. policy.stepsize='1 epochs,2 epochs')")
    try:
        pieces = split_values(raw)
        values = [yamlsafe.load(p) if p else None for p in pieces]
    except (ValueError, yaml.YAMLError) as err:
        raise InputError(f"--grid {text!r}: cannot parse the values ({err})") from None
    if any(p == "" for p in pieces):
        raise InputError(f"--grid {text!r}: empty value (two commas in a row, or a trailing comma?)")
    _check_distinct(key, values, f"--grid {text!r}")
    return key, values


def _check_distinct(key: str, values: list[Any], where: str) -> None:
    seen = [yaml.safe_dump(v) for v in values]
    if len(set(seen)) != len(seen):
        raise InputError(f"{where}: {key} repeats a value")


def expand(grid: dict[str, list[Any]], include: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Cartesian product of ``grid`` (in key order), then the extra ``include`` points."""
    points: list[dict[str, Any]] = []
    if grid:
        keys = list(grid)
        points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    points.extend(dict(extra) for extra in include)
    if not points:
        raise InputError("nothing to sweep: give --grid KEY=V1,V2,… or a sweep: block with grid: or include:")
    return points


def set_key(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    """``data[a][b] = value`` for ``key = "a.b"``; a number addresses a list element
    (``policy.bounds.1``), as in :func:`clrctl.config.schema.apply_override`."""
    node: Any = data
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{where}: {part!r} is not an index of {'.'.join(parts[:i])} (a list of {len(node)})")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {'.'.join(parts[:i])} is not a section")
        if last:
            node[part] = value
            return
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        node = child


# ---------------------------------------------------------------------------------------
# Names


def short_keys(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix that tells each key apart: policy.stepsize -> stepsize,
    policy.name -> policy."""
    short = {}
    for key in keys:
        parts = key.split(".")
        if len(parts) > 1 and parts[-1] == "name":  # policy.name -> policy, model.name -> model
            parts = parts[:-1]
        for depth in range(1, len(parts) + 1):
            suffix = ".".join(parts[-depth:])
            if not any(other != key and (other == suffix or other.endswith("." + suffix)
                                         or other.startswith(suffix + ".")) for other in keys):
                break
        short[key] = suffix
    return short


def slug(value: Any) -> str:
    """A value as a filename part: ``[0.01, 0.1]`` -> ``0.01-0.1``, ``"2 epochs"`` -> ``2epochs``."""
    if isinstance(value, (list, tuple)):
        return "-".join(slug(v) for v in value) or "empty"
    if isinstance(value, dict):
        return "-".join(f"{_key_slug(k)}-{slug(v)}" for k, v in value.items()) or "empty"
    if isinstance(value, float) and math.isfinite(value):
        text = f"{value:g}"
    elif isinstance(value, str):
        text = value.replace(" ", "")
    else:
        text = str(value)
    return _SAFE.sub("-", text).strip("-") or "x"


def _key_slug(key: Any) -> str:
    """A key as a filename part: like :func:`slug`, but ``_`` is kept (batch_size-32)."""
    return _SAFE_KEY.sub("-", str(key)).strip("-") or "x"


def point_names(points: list[dict[str, Any]]) -> list[str]:
    """Readable, unique, filesystem-safe names: ``name-triangular2_stepsize-2epochs``."""
    keys = list(dict.fromkeys(k for point in points for k in point))
    short = short_keys(keys)
    names, seen = [], set()
    for point in points:
        ordered = sorted(point.items(), key=lambda kv: keys.index(kv[0]))  # grid keys first, always
        # Keys are sanitised like values: a key such as model.args./abs/path names no directory.
        base = "_".join(f"{_key_slug(short[k])}-{slug(v)}" for k, v in ordered if v is not None) or "base"
        base = base[:150]
        name, n = base, 1
        while name in seen:
            n += 1
            name = f"{base}-{n}"
        seen.add(name)
        names.append(check_component(name))
    return names


def check_component(name: str) -> str:
    """``name`` if it is one plain file name (so DIR/configs/<name>.yaml and DIR/points/<name>
    stay inside DIR), else an error: the last guard of paths made from keys and values."""
    if not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
        raise InputError(f"point name {name!r} is not a plain file name; the sweep would write outside its directory")
    return name
