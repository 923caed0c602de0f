"""Which config keys two runs differ in (dotted keys, values side by side)."""

from __future__ import annotations

from typing import Any

IGNORED_CONFIG_KEYS = ("name", "seed")  # differ by design between runs that are compared
# sections a kind of run never reads: a training run ignores the sweep's settings (suggested.yaml
# keeps them), a range test sweeps its own LR, so the policy and the training length do not apply
IGNORED_SECTIONS = {"train": ("range_test",), "range-test": ("policy", "train")}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"policy": {"name": "fixed"}}`` -> ``{"policy.name": "fixed"}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def config_diff(base: dict[str, Any], cand: dict[str, Any], kind: str = "train") -> list[dict[str, Any]]:
    """The dotted keys whose values differ (``name``, ``seed`` and the sections ``kind`` never
    reads, :data:`IGNORED_SECTIONS`, ignored)."""
    a, b = flatten(base), flatten(cand)
    sections = IGNORED_SECTIONS.get(kind, ())
    keys = [k for k in list(a) + [k for k in b if k not in a]
            if k not in IGNORED_CONFIG_KEYS and k.split(".", 1)[0] not in sections]
    return [{"key": k, "baseline": a.get(k), "candidate": b.get(k)} for k in keys if a.get(k) != b.get(k)]
