"""A user model that misbehaves on rank 1 only, for DDP tests (issue 17): ``stall_s`` makes
rank 1's forward sleep that long once, after ``after`` training calls (a stuck rank);
``fail_build`` makes building the model fail on rank 1 (an error on one rank only), once the
file ``wait_for`` exists (rank 0's run.json: the run directory was created)."""

import os
import time
from pathlib import Path

from torch import nn


def _rank_one() -> bool:
    return os.environ.get("RANK") == "1"


class StallMLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, after: int, stall_s: float):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, num_classes))
        self.after, self.stall_s, self.calls = after, stall_s, 0

    def forward(self, x):
        if self.training and _rank_one():
            self.calls += 1
            if self.calls == self.after + 1:
                time.sleep(self.stall_s)
        return self.net(x)


def build(input_shape, num_classes, after: int = 3, stall_s: float = 0.0, fail_build: bool = False,
          wait_for: str = ""):
    if fail_build and _rank_one():
        deadline = time.monotonic() + 60
        while wait_for and not Path(wait_for).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        raise RuntimeError("rank 1 cannot build its model")
    features = 1
    for size in input_shape:
        features *= size
    return StallMLP(features, num_classes, after, stall_s)
