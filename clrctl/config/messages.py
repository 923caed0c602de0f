"""Validation errors as one line a user can act on: ``<dotted.key>: <what was expected>``.

pydantic's errors name union branches, schema classes and list positions; this module
turns the first of them into the key the user wrote (``policy.bounds``, not
``policy.bounds.tuple[float, float].1``), adds a "did you mean" to an unknown key, and
never names a schema class. It knows the schema only through the root model it is given,
so that :mod:`clrctl.config.schema` can import it without a circle.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from clrctl.errors import echo


def describe_validation_error(err: ValidationError, data: dict[str, Any], root: type[BaseModel]) -> str:
    """One line: the first problem, naming the dotted key and what was expected. ``data``
    is what was validated (to show the user's own value); ``root`` the model that validated
    it, whose fields are the keys a "did you mean" chooses from."""
    first = err.errors()[0]
    kind = first["type"]
    raw = [str(p) for p in first["loc"]]
    # An unknown key is the last part of its location, whatever it is called (even "int").
    last = raw[-1:] if kind == "extra_forbidden" else []
    loc = [p for p in raw[: len(raw) - len(last)] if not _is_union_branch(p)] + last
    if kind == "missing" and len(loc) > 1 and loc[-1].isdigit():
        # A short list for a pair such as bounds: pydantic names the missing position
        # (policy.bounds.1); the user wrote the list, so name the list and show it.
        loc = loc[:-1]
        kind, first = "too_short", {**first, "msg": "expected 2 values", "input": _lookup(data, loc)}
    elif loc[:2] == ["policy", "bounds"] and len(loc) == 3 and loc[2].isdigit():
        loc, first = loc[:2], {**first, "input": _lookup(data, loc[:2])}  # e.g. [0.1, 'a']
    key = ".".join(loc) or "config"
    if kind == "extra_forbidden":
        hint = did_you_mean(loc[-1], _known_keys(loc[:-1], root))
        return f"{key}: unknown key{hint}"
    msg = first["msg"]
    msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)
    # Model-level validators start their message with the key they are about.
    field_msg = re.match(r"^([a-z_]+(?:\.[a-z_]+)*): (.*)$", msg)  # (a dotted key: a sub-section's)
    if field_msg and field_msg.group(1).split(".")[0] in _known_keys(loc, root):
        key = ".".join(loc + field_msg.group(1).split("."))
        msg = field_msg.group(2)
    if kind in ("missing",):
        msg = "required key is missing"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        msg = "expected a section of keys (a mapping such as {name: ...})"
    msg = _INTERNAL_NAME.sub("a section", msg)  # never name a schema class such as PolicyConfig
    if key == "policy.bounds" and kind in ("tuple_type", "too_short", "too_long", "float_parsing", "float_type"):
        msg = "expected [base_lr, max_lr] or {from: <range-test run>}"
    given = first.get("input")
    if "got" not in msg and kind != "missing" and not isinstance(given, dict):
        msg = f"{msg} (got {echo(given)})"
    return f"{key}: {_shorten(msg)}"


# A schema class as pydantic names it in messages ("instance of PolicyConfig").
_INTERNAL_NAME = re.compile(r"\binstance of \w+|\b\w+Config\b|\bBoundsFrom\b")


def _shorten(message: str, limit: int = 400) -> str:
    """A validator's message cut to ``limit`` characters: it may quote a huge value."""
    return message if len(message) <= limit else f"{message[: limit - 1]}…"


def _lookup(data: Any, loc: list[str]) -> Any:
    """The user's value at a dotted location (None where there is none)."""
    for part in loc:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, (list, tuple)) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def _is_union_branch(part: Any) -> bool:
    # pydantic names union branches in the location, e.g. 'tuple[float, float]' or 'BoundsFrom'.
    text = str(part)
    return "[" in text or text in ("BoundsFrom", "int", "str", "function-after[_check_duration()]")


def _known_keys(loc: list[str], root: type[BaseModel]) -> list[str]:
    """The keys (aliases where set) of the section at ``loc`` under ``root``."""
    model: Any = root
    for part in loc:
        if part.isdigit():  # a list index: the list's item type follows
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        model = next(
            (a for a in (getattr(annotation, "__args__", None) or (annotation,)) if hasattr(a, "model_fields")),
            None,
        )
        if model is None:
            return []
    return [f.alias or name for name, f in model.model_fields.items()]


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` (difflib), or empty."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
