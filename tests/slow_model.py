"""A user model (``model.name: slow_model:build``) that sleeps in forward, so a test can
reliably kill or signal a training subprocess in the middle of a run."""

import time

from torch import nn


class SlowMLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, delay_s: float):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, num_classes))
        self.delay_s = delay_s

    def forward(self, x):
        time.sleep(self.delay_s)
        return self.net(x)


def build(input_shape, num_classes, delay_s: float = 0.01):
    features = 1
    for size in input_shape:
        features *= size
    return SlowMLP(features, num_classes, delay_s)
