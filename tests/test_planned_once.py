"""The config is planned once (issue 18, item 4): loaded and validated once, each stage's
merged policy and optimizer resolved once per Config, the data built once per seed.

Counted through the CLI, in-process: ``Config.model_validate`` (the whole config), the
validation of one stage's merged blocks, and ``build_data``. Before this was fixed, a
two-stage ``clrctl train`` validated the whole config 9 times and ``--seeds 3`` of a
two-stage config 23 times, and ``--seeds 3`` built the data 4 times.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from clrctl.config import schema

STAGES = [{"name": "head-only", "steps": 4, "freeze": ["body"]},
          {"name": "all", "steps": 4, "policy": {"name": "triangular", "bounds": [0.01, 0.05], "stepsize": 2}}]


@pytest.fixture
def counts(monkeypatch):
    """How often the whole config and a stage's blocks were validated, and the data built."""
    import clrctl.data.datasets as datasets
    import clrctl.engine.setup as setup

    seen: Counter = Counter()

    def counting(model, key):
        validate = model.model_validate.__func__

        def wrapper(cls, *args, **kwargs):
            seen[key] += cls is model  # (not a subclass's own validation)
            return validate(cls, *args, **kwargs)

        monkeypatch.setattr(model, "model_validate", classmethod(wrapper))

    counting(schema.Config, "config")
    counting(schema._StageBlocks, "stage")
    build_data = datasets.build_data

    def counted_build_data(*args, **kwargs):
        seen["build_data"] += 1
        return build_data(*args, **kwargs)

    monkeypatch.setattr(datasets, "build_data", counted_build_data)
    monkeypatch.setattr(setup, "build_data", counted_build_data)
    return seen


def staged(tiny_config):
    return tiny_config("staged", stages=STAGES, train={"epochs": None, "eval_every": 3})


def test_a_two_stage_train_validates_the_config_once(cli, tiny_config, tmp_path, counts):
    assert cli("train", staged(tiny_config), "--run-dir", tmp_path / "run", "-q") == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    assert counts == Counter(config=1, stage=2, build_data=1)  # was config 9 (1 + 4 plans of 2 stages)


def test_seeds_3_validates_once_and_builds_the_data_once_per_seed(cli, tiny_config, tmp_path, counts):
    assert cli("train", staged(tiny_config), "--seeds", "3", "--run-dir", tmp_path / "group", "-q") == 0
    for seed in range(3):
        assert json.loads((tmp_path / "group" / f"seed-{seed}" / "run.json").read_text())["status"] == "completed"
    # was config 23 (1 + 11 plans of 2 stages) and build_data 4 (a throwaway one before the group directory)
    assert counts == Counter(config=1, stage=2, build_data=3)


def test_bad_input_of_a_seed_group_still_fails_before_its_directory(cli, tiny_config, tmp_path, capsys):
    config = tiny_config(model={"name": "mlp", "hidden": [32], "weights": str(tmp_path / "missing.pt")})
    assert cli("train", config, "--seeds", "2", "--run-dir", tmp_path / "group", "-q") == 2
    assert "model.weights" in capsys.readouterr().err
    assert not (tmp_path / "group").exists()


def test_a_copy_keeps_the_stages_only_when_the_seed_alone_changes(counts):
    config = schema.validate({"stages": STAGES})
    assert counts["stage"] == 2
    stages = config.plan()
    assert config.plan() == stages and counts["stage"] == 2  # kept, not validated again
    reseeded = config.model_copy(update={"seed": 7})
    assert all(a is b for a, b in zip(reseeded.plan(), stages)) and counts["stage"] == 2
    shorter = config.model_copy(update={"stages": [schema.StageConfig(**STAGES[0])]})
    assert [s.name for s in shorter.plan()] == ["head-only"] and counts["stage"] == 3
    faster = config.model_copy(update={"policy": config.policy.model_copy(update={"lr": 0.2})})
    assert faster.plan()[0].policy.lr == 0.2  # re-resolved from the new top-level policy
