"""Shared fixtures: run the real CLI in-process, and tiny configs that train in about a second."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def run_cli(*args: str) -> int:
    """``clrctl ARGS`` in-process; returns the exit code."""
    from clrctl.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def tiny_config(tmp_path):
    """Write a small digits config (override anything with keyword sections)."""

    def make(name: str = "tiny", **sections) -> Path:
        config = {
            "name": name, "seed": 0, "device": "cpu",
            "dataset": {"name": "digits", "batch_size": 64},
            "model": {"name": "mlp", "hidden": [32]},
            "optimizer": {"name": "sgd", "momentum": 0.9},
            "policy": {"name": "triangular2", "bounds": [0.02, 0.1], "stepsize": 7},
            "train": {"epochs": 2, "eval_every": 5},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return make
