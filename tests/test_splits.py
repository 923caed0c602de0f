"""clrctl.data.splits and the digits loader against scikit-learn: the same indices, arrays and dtypes
(a run's metrics.csv depends on them byte for byte)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from clrctl.data.datasets import _load_digits, _stratified_split
from clrctl.errors import ConfigError
from clrctl.data.splits import train_val_split

SEEDS = [*range(31), 2**32 - 1, 2**40 + 7]
FRACTIONS = [0.1, 0.2, 0.25, 1 / 3, 0.5]
_rng = np.random.RandomState(1234)
LABELS = {
    "digits": load_digits().target,
    "unbalanced": np.repeat(np.arange(5), [3, 40, 7, 100, 2]),
    "shuffled strings": _rng.permutation(np.repeat(np.array(["cat", "dog", "eel"]), [11, 5, 30])),
    "one member (fallback)": np.array([0] * 20 + [1] * 9 + [2]),
    "more classes than test samples (fallback)": np.repeat(np.arange(8), 2),
    "python list": [i % 3 for i in range(23)],
}


def sklearn_split(y, fraction: float, seed: int):
    """What clrctl used before it owned the split (clrctl.data.datasets, up to 1db3cba)."""
    index = np.arange(len(y))
    try:
        return train_test_split(index, test_size=fraction, stratify=y, random_state=seed % 2**32)
    except ValueError:
        return train_test_split(index, test_size=fraction, random_state=seed % 2**32)


@pytest.mark.parametrize("labels", LABELS)
def test_split_equals_sklearns_train_test_split(labels):
    y = LABELS[labels]
    for fraction in FRACTIONS:
        for seed in SEEDS:
            expected = sklearn_split(y, fraction, seed)
            got = train_val_split(y, fraction, seed)
            for want, have in zip(expected, got):
                assert np.array_equal(want, have), (labels, fraction, seed)
                assert want.dtype == have.dtype


def test_fallback_cases_do_fall_back():
    """The fallback labels above really take the unstratified path (else they test nothing)."""
    for name in ("one member (fallback)", "more classes than test samples (fallback)"):
        y = LABELS[name]
        with pytest.raises(ValueError):
            train_test_split(np.arange(len(y)), test_size=0.25, stratify=y, random_state=0)


def test_a_split_without_training_samples_is_a_config_error():
    with pytest.raises(ConfigError, match="val_fraction"):
        _stratified_split([0, 1], 0.6, 0)


def test_digits_arrays_equal_sklearns_load_digits():
    images, target = _load_digits()
    expected = load_digits()
    assert images.dtype == expected.images.dtype and target.dtype == expected.target.dtype
    assert images.shape == expected.images.shape == (1797, 8, 8)
    assert np.array_equal(images, expected.images) and np.array_equal(target, expected.target)


def test_digits_without_sklearn_is_one_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    with pytest.raises(ConfigError, match="scikit-learn") as err:
        _load_digits()
    assert "\n" not in str(err.value)
