"""The seeded train / validation split of data sets without an official one (digits,
synthetic, a single image-folder tree), index for index what scikit-learn gives.

:func:`train_val_split` returns what ``sklearn.model_selection.train_test_split(index,
test_size=fraction, stratify=y, random_state=seed % 2**32)`` returns, and falls back to the
unstratified ``train_test_split(index, test_size=..., random_state=...)`` where sklearn
refuses to stratify (a class with one member; fewer train or test samples than classes).
It follows sklearn 1.x's ``_validate_shuffle_split``, ``StratifiedShuffleSplit._iter_indices``
(with ``sklearn.utils.extmath._approximate_mode``) and ``ShuffleSplit._iter_indices``, on
``np.random.RandomState(seed)``.

Why we own it: importing sklearn costs ~0.7 s at the start of every run, and the split of a
seed (so every metrics.csv) no longer depends on which sklearn version is installed.
tests/test_splits.py checks it against sklearn.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def train_val_split(y: Sequence, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) of ``len(y)`` samples, each in a shuffled order:
    ``ceil(fraction * n)`` samples for validation, stratified by ``y`` when every class allows.

    Raises ValueError when no training sample would be left.
    """
    y = np.asarray(y)
    n = len(y)
    n_test = math.ceil(fraction * n)
    n_train = n - n_test
    if n_train <= 0:
        raise ValueError(f"a validation fraction of {fraction:g} of {n} samples leaves none for training")
    seed = seed % 2**32
    index = np.arange(n)
    if _stratifiable(y, n_train, n_test):
        train, test = _stratified(y, n_train, n_test, np.random.RandomState(seed))
    else:
        train, test = _shuffled(n, n_train, n_test, np.random.RandomState(seed))
    return index[train], index[test]


def _stratifiable(y: np.ndarray, n_train: int, n_test: int) -> bool:
    """Whether StratifiedShuffleSplit accepts it: >= 2 members per class, and at least one
    train and one test sample per class."""
    counts = np.unique(y, return_counts=True)[1]
    return counts.min() >= 2 and n_train >= len(counts) and n_test >= len(counts)


def _shuffled(n: int, n_train: int, n_test: int, rng: np.random.RandomState):
    """ShuffleSplit: test first, then train, from one permutation."""
    permutation = rng.permutation(n)
    return permutation[n_test : n_test + n_train], permutation[:n_test]


def _stratified(y: np.ndarray, n_train: int, n_test: int, rng: np.random.RandomState):
    """StratifiedShuffleSplit: per class, a shuffled share for train and for test (the
    shares from the approximate mode of the multivariate hypergeometric), then both shuffled."""
    _, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list = []
    test: list = []
    for i in range(len(class_counts)):
        members = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(members[: n_i[i]])
        test.extend(members[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Draws per class: the floored proportional share, plus one for the largest remainders
    (ties broken by ``rng``) until ``n_draws`` are placed. The same float operations, in the
    same order, as sklearn: a different rounding would move a sample."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)
