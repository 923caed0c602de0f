"""A user model (``model.name: slow_model:build``) that sleeps in forward, so a test can
reliably kill or signal a training subprocess in the middle of a run.

Held (see conftest's ``hold``): with ``SLOW_MODEL_HOLD=FILE`` in the environment, a training-mode
forward after ``SLOW_MODEL_AFTER`` of them (a probe batch counts) waits while FILE exists — the run cannot end
before the test has signalled or killed it, however fast the machine (the config, and so a
reference run of it, is the same held or not)."""

import os
import time

from torch import nn


class SlowMLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, delay_s: float):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, num_classes))
        self.delay_s = delay_s
        self.hold, self.after = os.environ.get("SLOW_MODEL_HOLD", ""), int(os.environ.get("SLOW_MODEL_AFTER", "0"))
        self.calls = 0

    def forward(self, x):
        time.sleep(self.delay_s)
        if self.training and self.hold:
            self.calls += 1
            while self.calls > self.after and os.path.exists(self.hold):
                time.sleep(0.005)
        return self.net(x)


def build(input_shape, num_classes, delay_s: float = 0.01):
    features = 1
    for size in input_shape:
        features *= size
    return SlowMLP(features, num_classes, delay_s)
