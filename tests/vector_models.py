"""User models for the vectorised seed-group tests (tests/test_vectorize.py)."""

import torch
from torch import nn


def _features(input_shape) -> int:
    features = 1
    for size in input_shape:
        features *= size
    return features


def nan_for_seed(input_shape, num_classes, seed: int = 1):
    """An MLP whose output layer holds a NaN when built under ``seed`` (torch.initial_seed():
    the run's seed): that seed's loss is NaN from its first step, the others' are finite."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(_features(input_shape), 32), nn.ReLU(), nn.Linear(32, num_classes))
    if torch.initial_seed() == seed:
        with torch.no_grad():
            model[3].bias[0] = float("nan")
    return model


def batchnorm(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(_features(input_shape), 32), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Linear(32, num_classes))


class DataDependent(nn.Module):
    """A forward that branches on a value (``.item()``): fine alone, untraceable by vmap."""

    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.flat, self.fc = nn.Flatten(), nn.Linear(features, num_classes)

    def forward(self, x):
        x = self.flat(x)
        if x.abs().sum().item() > 1e9:
            x = x / 2
        return self.fc(x)


def untraceable(input_shape, num_classes):
    return DataDependent(_features(input_shape), num_classes)
