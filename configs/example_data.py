"""An example of ``dataset.name: module:callable`` (see configs/custom-data.yaml).

Each callable returns ``(train, val)``. ``tensors`` gives ``(x, y)`` pairs, which clrctl
holds on the device and batches there (fastest for data that fit in memory); ``datasets``
gives ``torch.utils.data.Dataset``s, read by a DataLoader with ``dataset.num_workers``
worker processes (for data that are read or decoded per sample). Run from the project root:

    clrctl train configs/custom-data.yaml
    clrctl train configs/custom-data.yaml dataset.name=configs.example_data:datasets
"""

import torch


def _breast_cancer(seed: int):
    """sklearn's bundled Wisconsin breast-cancer set: 569 samples, 30 features, 2 classes;
    a stratified 75/25 split by ``seed``, standardised with the training split's statistics."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    mean, std = x_train.mean(0), x_train.std(0)
    as_x = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32)  # noqa: E731
    return (as_x(x_train), torch.tensor(y_train)), (as_x(x_val), torch.tensor(y_val))


def tensors(seed: int = 0):
    """(train, val) as (x, y) tensor pairs."""
    return _breast_cancer(seed)


def datasets(seed: int = 0):
    """(train, val) as map-style Datasets."""
    train, val = _breast_cancer(seed)
    return torch.utils.data.TensorDataset(*train), torch.utils.data.TensorDataset(*val)
