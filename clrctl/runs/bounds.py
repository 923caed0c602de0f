"""``policy.bounds: {from: RUN}``: the bounds a finished range-test run suggested.

The schema only checks that ``from`` names a path; reading that run (its ``summary.json``)
happens here, beside the rest of the code that reads run directories, just before a run,
preview or sweep needs numbers. The result is a new, validated :class:`Config`.
"""

from __future__ import annotations

import json
from pathlib import Path

from clrctl.config.schema import BoundsFrom, Config, looked_in, validate
from clrctl.errors import ConfigError


def resolve_bounds_from(config: Config) -> Config:
    """Replace ``bounds: {from: RUN}`` (of ``policy`` and of each stage's policy) by the bounds
    that range-test run suggested."""
    data = config.to_dict()
    found = False
    if isinstance(config.policy.bounds, BoundsFrom):
        data["policy"]["bounds"], found = _suggested_bounds(config.policy.bounds.from_, "policy.bounds.from"), True
    for stage in data.get("stages") or []:
        bounds = (stage.get("policy") or {}).get("bounds")
        if isinstance(bounds, dict) and "from" in bounds:
            key = f"stages.{stage['name']}.policy.bounds.from"
            stage["policy"]["bounds"], found = _suggested_bounds(str(bounds["from"]), key), True
    if not found:
        return config
    resolved = validate(data)
    resolved._written = config._written
    return resolved


def usable_window(source: str, key: str) -> tuple[float, float]:
    """The LRs a finished range test found usable, for a search's ``loguniform(from: RUN)``:
    from its suggested ``base_lr`` (where accuracy starts to rise) to the LR at the loss
    minimum (beyond it training falls apart), or its suggested ``max_lr`` where that is higher
    or there is no loss minimum. A missing or unfinished run: ConfigError naming ``key``."""
    base, high = _suggested_bounds(source, key)
    summary = json.loads((Path(source) / "summary.json").read_text())
    loss_min = (((summary.get("suggestion") or {}).get("candidates") or {}).get("loss_min") or {}).get("lr")
    if isinstance(loss_min, (int, float)) and loss_min > high:
        high = float(loss_min)
    if not 0 < base < high:
        raise ConfigError(f"{key}: {source} has no usable window (base_lr {base:.4g}, max_lr {high:.4g})")
    return base, high


def _suggested_bounds(source: str, key: str) -> list[float]:
    run = Path(source)
    summary_path = run / "summary.json"
    if not run.exists():
        raise ConfigError(f"{key}: {run} is not a finished run (no such directory){looked_in(source)}")
    if not summary_path.is_file():
        raise ConfigError(f"{key}: {run} is not a finished run (no summary.json)")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{key}: cannot read {summary_path}") from None
    suggestion = summary.get("suggestion") or {}
    base, high = suggestion.get("base_lr"), suggestion.get("max_lr")
    if summary.get("status") != "completed" or base is None or high is None:
        raise ConfigError(f"{key}: {run} has no suggested bounds (not a completed range test?)")
    return [float(base), float(high)]
