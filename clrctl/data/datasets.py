"""The built-in data sets -> a :class:`~clrctl.data.sources.DataBundle` on the device.

:func:`build_data` turns a :class:`~clrctl.config.schema.DatasetConfig` into the train /
validation batch sources of :mod:`clrctl.data.sources`: digits, MNIST, Fashion-MNIST,
CIFAR-10/100 and synthetic data as a :class:`~clrctl.data.sources.TensorSource` on the
device; ``imagefolder`` data through a :class:`~clrctl.data.sources.LoaderSource` with
worker processes; ``module:callable`` data by :mod:`clrctl.data.userdata`. MNIST and
Fashion-MNIST are read from their IDX files by :mod:`clrctl.data.idx` (gzip'd or not, under
``dataset.root`` or where Debian's package installs them); torchvision only fetches them
(``dataset.download``). Splits without an official one are stratified by seed
(:mod:`clrctl.data.splits`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from clrctl.config.schema import DatasetConfig
from clrctl.compat import import_torchvision
from clrctl.data.sources import (Arrays, DataBundle, LoaderSource, TensorSource, check_batches, epoch_generator,
                                  keep_classes)
from clrctl.errors import ConfigError, DataError

# (torchvision class, name in messages, per-channel mean, per-channel std) of the
# official normalisation constants, computed on each training split.
_TORCHVISION_SETS = {
    "mnist": ("MNIST", "MNIST", (0.1307,), (0.3081,)),
    "fashion-mnist": ("FashionMNIST", "Fashion-MNIST", (0.2860,), (0.3530,)),
    "cifar10": ("CIFAR10", "CIFAR-10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", "CIFAR-100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


# ---------------------------------------------------------------------------------------
# Building a data set


# Training-split sizes of the data sets whose size is known without reading them.
_TRAIN_SIZES = {"mnist": 60_000, "fashion-mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000}


def known_steps_per_epoch(cfg: DatasetConfig) -> Optional[int]:
    """Batches per training epoch, without loading the data (None for an image folder).

    digits and synthetic are split as ``train_test_split`` does: ``ceil(n * val_fraction)``
    samples go to validation."""
    if cfg.classes is not None:  # how many samples a subset of labels keeps depends on the data
        return None
    if cfg.name in _TRAIN_SIZES:
        n = _TRAIN_SIZES[cfg.name]
    elif cfg.name in ("digits", "synthetic"):
        total = 1797 if cfg.name == "digits" else cfg.num_samples  # sklearn's digits: 1797 images
        n = total - math.ceil(cfg.val_fraction * total)
    else:
        return None
    return n // cfg.batch_size if cfg.drop_last else math.ceil(n / cfg.batch_size)


def build_data(cfg: DatasetConfig, seed: int, device: torch.device) -> DataBundle:
    """The train / validation sources of ``cfg.name`` on ``device``.

    Raises :class:`ConfigError` (naming ``dataset.*``) when the data cannot be found or used.
    """
    device = torch.device(device)
    if ":" in cfg.name:  # module:callable, the user's own data
        from clrctl.data.userdata import build_user_data

        return build_user_data(cfg, seed, device)
    if cfg.name == "imagefolder":
        if cfg.classes is not None:
            raise ConfigError("dataset.classes: not available for imagefolder; keep only those class folders instead")
        return _imagefolder(cfg, seed, device)
    if cfg.name == "digits":
        arrays = _digits(cfg, seed)
    elif cfg.name == "synthetic":
        arrays = _synthetic(cfg, seed)
    elif cfg.name in _IDX_SETS:
        arrays = _idx_arrays(cfg)
    else:
        arrays = _torchvision(cfg)
    if cfg.classes is not None:
        arrays = keep_classes(arrays, cfg.classes)
    if cfg.augment and arrays.x.dim() != 4:
        raise ConfigError(f"dataset.augment: random crop and flip need images; {cfg.name!r} has flat features")
    norm = dict(mean=arrays.mean, std=arrays.std)
    train = TensorSource(
        arrays.x, arrays.y, cfg.batch_size, device, shuffle=True, augment=cfg.augment, seed=seed,
        eval_batch_size=cfg.eval_batch_size, drop_last=cfg.drop_last, **norm,
    )  # fmt: skip
    check_batches(train, cfg)
    val = TensorSource(arrays.val_x, arrays.val_y, cfg.eval_batch_size, device, **norm)
    return DataBundle(train, val, tuple(arrays.x.shape[1:]), arrays.num_classes, cfg.name)


def _stratified_split(y, val_fraction: float, seed: int):
    """(train indices, val indices): stratified by class when every class allows it, else a
    seeded split (tiny image folders); sklearn's train_test_split, index for index."""
    from clrctl.data.splits import train_val_split

    try:
        train, val = train_val_split(y, val_fraction, seed)
    except ValueError as err:
        raise ConfigError(f"dataset.val_fraction: {err}") from None
    classes = len(set(y.tolist() if hasattr(y, "tolist") else y))
    if len(train) < classes:  # a classifier that never sees some class: not a run anyone wants
        raise ConfigError(f"dataset.val_fraction: {val_fraction:g} leaves {len(train)} training samples for "
                          f"{classes} classes; lower it so that every class can be in training")
    return train, val


def _digits(cfg: DatasetConfig, seed: int):
    """sklearn's bundled 8x8 digits (1797 images, values 0..16), normalised by train stats."""
    images, target = _load_digits()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(target, dtype=torch.int64)
    train, val = (torch.as_tensor(i) for i in _stratified_split(target, cfg.val_fraction, seed))
    # One scalar mean/std from the training split only, so validation leaks nothing.
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return Arrays(x[train], y[train], x[val], y[val], num_classes=10)


def _load_digits():
    """(images float64 (1797, 8, 8), target int64) as ``sklearn.datasets.load_digits`` reads
    them, from the file sklearn bundles, without importing sklearn (~0.7 s of start-up)."""
    import gzip
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else None
    if path is None or not path.is_file():
        raise ConfigError("dataset.name: digits needs scikit-learn, which bundles the data "
                          "(pip install scikit-learn)")
    with gzip.open(path, mode="rt", encoding="utf-8") as file:
        data = np.loadtxt(file, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


# Noise std per feature of the synthetic task, against cluster centres of norm 3: the nearest
# centres of two classes are ~4 apart: a small MLP levels off near 94% (32 features, 10 classes).
_SYNTHETIC_NOISE = 0.6


def _synthetic(cfg: DatasetConfig, seed: int):
    """A seeded Gaussian-mixture task: 2 clusters per class, so not linearly separable.

    A small MLP learns it to well above chance within a few epochs.
    """
    generator = epoch_generator(seed, -1)  # a stream no training epoch uses
    n, features, classes = cfg.num_samples, cfg.num_features, cfg.num_classes
    centres = torch.randn(2 * classes, features, generator=generator)
    centres = 3.0 * centres / centres.norm(dim=1, keepdim=True)
    cluster = torch.randint(0, 2 * classes, (n,), generator=generator)
    x = centres[cluster] + _SYNTHETIC_NOISE * torch.randn(n, features, generator=generator)
    y = cluster % classes
    train, val = (torch.as_tensor(i) for i in _stratified_split(y.numpy(), cfg.val_fraction, seed))
    return Arrays(x[train], y[train], x[val], y[val], num_classes=classes)


def _torchvision(cfg: DatasetConfig):
    """The official train / test splits of a torchvision data set as uint8 (N, C, H, W)."""
    import numpy as np

    cls_name, label, mean, std = _TORCHVISION_SETS[cfg.name]
    cls = getattr(import_torchvision().datasets, cls_name)
    before = _entries(Path(cfg.root)) if cfg.download else set()
    try:
        train = cls(cfg.root, train=True, download=cfg.download)
        test = cls(cfg.root, train=False, download=cfg.download)
    except Exception as err:  # noqa: BLE001 - torchvision raises many kinds; each is one line
        if cfg.download:  # e.g. offline: leave no empty MNIST/raw or half-fetched archive behind
            _remove_new(Path(cfg.root), before)
        raise _torchvision_error(cfg, label, err) from None

    def images(data) -> Tensor:
        data = torch.as_tensor(np.asarray(data))
        # MNIST: (N, 28, 28); CIFAR: (N, 32, 32, 3) channels-last numpy.
        return data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2).contiguous()

    def labels(targets) -> Tensor:
        return torch.as_tensor(np.asarray(targets), dtype=torch.int64)

    return Arrays(
        images(train.data), labels(train.targets), images(test.data), labels(test.targets),
        num_classes=len(train.classes), mean=mean, std=std,
    )  # fmt: skip


# The MNIST family: read from IDX files by clrctl.data.idx, 10 classes each.
_IDX_SETS = ("mnist", "fashion-mnist")


def _idx_arrays(cfg: DatasetConfig) -> Arrays:
    """MNIST / Fashion-MNIST's official train / test splits as uint8 (N, 1, 28, 28)."""
    from clrctl.data.idx import read_split

    _, label, mean, std = _TORCHVISION_SETS[cfg.name]
    directory, files = _idx_location(cfg)
    try:
        (x, y), (val_x, val_y) = read_split(files, "train"), read_split(files, "test")
    except ValueError as err:
        raise ConfigError(f"dataset.root: cannot read the {label} files under '{directory}': {err}") from None
    return Arrays(x, y, val_x, val_y, num_classes=10, mean=mean, std=std)


def _idx_location(cfg: DatasetConfig):
    """(directory, {file name: path}) of the first place that holds all four IDX files;
    with ``dataset.download``, torchvision fetches them into ``ROOT/<folder>/raw`` when none does."""
    from clrctl.data.idx import candidate_directories, find_files

    folder, label, _, _ = _TORCHVISION_SETS[cfg.name]
    root_is_default = cfg.root == DatasetConfig.model_fields["root"].default
    candidates = candidate_directories(cfg.name, folder, cfg.root, root_is_default)
    for directory in candidates:
        files = find_files(directory)
        if files is not None:
            return directory, files
    if cfg.download:
        cls = getattr(import_torchvision().datasets, folder)
        before = _entries(Path(cfg.root))
        try:
            cls(cfg.root, train=True, download=True)  # fetches and unpacks all four files
        except Exception as err:  # noqa: BLE001 - torchvision raises many kinds; each is one line
            _remove_new(Path(cfg.root), before)  # e.g. offline: no empty MNIST/raw left behind
            raise _torchvision_error(cfg, label, err) from None
        files = find_files(candidates[0])
        if files is not None:
            return candidates[0], files
    raise ConfigError(_idx_missing_message(cfg, label, candidates, root_is_default))


def _idx_missing_message(cfg: DatasetConfig, label: str, candidates: list[Path], root_is_default: bool) -> str:
    from clrctl.data.idx import SYSTEM_DATA

    system = SYSTEM_DATA.get(cfg.name)
    if root_is_default and system is not None:
        places = " or ".join(f"'{c}'" for c in (candidates[0], candidates[-1]))
        return (f"dataset.root: no {label} data in {places}: apt-get install {system.package} (offline, "
                f"~31 MB), or point dataset.root at the IDX files (dataset.download: true fetches them)")
    return (f"dataset.root: no {label} data under '{cfg.root}' (expected {candidates[0].relative_to(cfg.root)}/"
            f"train-images-idx3-ubyte[.gz] and the other IDX files; set dataset.download: true to fetch it, "
            f"or point dataset.root at it)")


def _entries(root: Path) -> set[Path]:
    """``root`` and what lies one and two levels below it (where torchvision's downloads put
    their folders and archives: MNIST/raw/…, cifar-10-python.tar.gz), if it exists."""
    if not root.is_dir():
        return set()
    found = {root}
    for child in root.iterdir():
        found.add(child)
        if child.is_dir() and not child.is_symlink():
            found.update(child.iterdir())
    return found


def _remove_new(root: Path, before: set[Path]) -> None:
    """Remove what a failed download created under ``root`` (``root`` too, if it made it)."""
    import shutil

    for path in sorted(_entries(root) - before, key=lambda p: len(p.parts)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)


def _download_reason(err: BaseException) -> str:
    """torchvision's download errors open with a heading ("Error downloading X:") and end with
    each mirror's error: the heading and the last error, on one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[-1]}"
    return lines[0] if lines else type(err).__name__


def _torchvision_error(cfg: DatasetConfig, label: str, err: Exception) -> ConfigError:
    if cfg.download:
        return ConfigError(f"dataset.download: could not fetch {label} into '{cfg.root}': {_download_reason(err)}")
    if isinstance(err, RuntimeError):  # torchvision's "Dataset not found" (CIFAR: "or corrupted")
        return ConfigError(
            f"dataset.root: no {label} data under '{cfg.root}' "
            "(set dataset.download: true to fetch it, or point dataset.root at it)"
        )
    return ConfigError(f"dataset.root: cannot read the {label} files under '{cfg.root}': {_one_line(err)}")


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# ---------------------------------------------------------------------------------------
# imagefolder


def _imagefolder(cfg: DatasetConfig, seed: int, device: torch.device) -> DataBundle:
    """``root/train`` + ``root/val`` class folders, or one class-folder tree split by seed.

    Both splits are stored in a seeded, fixed order (ImageFolder lists class by class), so
    that ``head(n)`` — the range test's evaluation slice — mixes the classes.
    """
    root = Path(cfg.root)
    if not root.is_dir():
        raise ConfigError(f"dataset.root: no such directory '{cfg.root}' (expected class folders of images)")
    if (root / "train").is_dir() and (root / "val").is_dir():
        train_set, val_set = _image_folder(root / "train", cfg.image_size), _image_folder(root / "val", cfg.image_size)
        if val_set.classes != train_set.classes:
            raise ConfigError(
                f"dataset.root: train/ and val/ under '{cfg.root}' have different class folders "
                f"({len(train_set.classes)} vs {len(val_set.classes)})"
            )
        classes = train_set.classes
        generator = epoch_generator(seed, -2)  # a stream no training epoch uses
        train_set = torch.utils.data.Subset(train_set, torch.randperm(len(train_set), generator=generator).tolist())
        val_set = torch.utils.data.Subset(val_set, torch.randperm(len(val_set), generator=generator).tolist())
    else:
        full = _image_folder(root, cfg.image_size)
        if len(full) < 2:
            raise ConfigError(f"dataset.root: need at least 2 images under '{cfg.root}' to split off validation")
        train_idx, val_idx = _stratified_split(full.targets, cfg.val_fraction, seed)  # shuffled
        train_set = torch.utils.data.Subset(full, train_idx.tolist())
        val_set = torch.utils.data.Subset(full, val_idx.tolist())
        classes = full.classes
    common = dict(num_workers=cfg.num_workers, eval_batch_size=cfg.eval_batch_size)
    train = LoaderSource(train_set, cfg.batch_size, device, shuffle=True, augment=cfg.augment, seed=seed,
                         drop_last=cfg.drop_last, **common)
    check_batches(train, cfg)
    val = LoaderSource(val_set, cfg.eval_batch_size, device, **common)
    return DataBundle(train, val, (3, cfg.image_size, cfg.image_size), len(classes), cfg.name)


def _image_folder(path: Path, size: int):
    """A torchvision ImageFolder of RGB images resized to size x size, normalised to [-1, 1]."""
    torchvision = import_torchvision()
    datasets, transforms = torchvision.datasets, torchvision.transforms
    transform = transforms.Compose(
        [
            transforms.Lambda(_to_rgb),
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )
    try:
        return datasets.ImageFolder(os.fspath(path), transform=transform, loader=_load_image)
    except (FileNotFoundError, OSError) as err:
        raise ConfigError(f"dataset.root: no images in class folders under '{path}' ({_one_line(err)})") from None


def _load_image(path: str):
    """torchvision's PIL loader, with a corrupt or truncated file named in one line."""
    from PIL import Image

    try:
        with open(path, "rb") as file:
            return Image.open(file).convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # PIL's ways of saying "not a readable image"
        raise DataError(f"dataset.root: cannot read image {path}: {_one_line(err)}") from None


def _to_rgb(image):
    # Module level (not a lambda) so that worker processes can pickle the transform.
    return image.convert("RGB")
