"""A user model whose forward fails on rank 1 after ``after`` training calls: one rank of a
DDP run crashing mid-run (issue 9)."""

import os

from torch import nn


class CrashMLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, after: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, num_classes))
        self.after, self.calls = after, 0

    def forward(self, x):
        if self.training and os.environ.get("RANK") == "1":
            self.calls += 1
            if self.calls > self.after:
                raise RuntimeError("rank 1 crashed on purpose")
        return self.net(x)


def build(input_shape, num_classes, after: int = 20):
    features = 1
    for size in input_shape:
        features *= size
    return CrashMLP(features, num_classes, after)
