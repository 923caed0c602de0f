"""Data sets -> batches on the device.

This module owns everything between a :class:`~clrctl.config.schema.DatasetConfig` and the
``(x float32, y int64)`` batches the trainer and the range test consume:

- :class:`TensorSource` keeps a whole data set as tensors on the device and batches there
  (the KellerJordan/cifar10-airbench style): digits, MNIST, Fashion-MNIST, CIFAR-10/100 and
  synthetic data. Image data stay uint8 on the device and are normalised per batch. MNIST
  and Fashion-MNIST are read from their IDX files by :mod:`clrctl.data.idx` (gzip'd or not,
  under ``dataset.root`` or where Debian's package installs them); torchvision only fetches
  them (``dataset.download``).
- :class:`LoaderSource` wraps a ``torch.utils.data.DataLoader`` with worker processes for
  ``imagefolder`` data that do not fit that mould.

Every random choice of an epoch (the shuffle order, the crop offsets and flips of
``dataset.augment``) is a pure function of ``(seed, epoch)``: a resumed run replays the
same batches without restoring any RNG state, and two runs with one seed see one stream.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from clrctl.config.schema import DatasetConfig
from clrctl.compat import import_torchvision
from clrctl.errors import ConfigError, DataError

# Padding of the random crop (pixels per side), as in He et al. 2015 and airbench.
CROP_PAD = 4

# (torchvision class, name in messages, per-channel mean, per-channel std) of the
# official normalisation constants, computed on each training split.
_TORCHVISION_SETS = {
    "mnist": ("MNIST", "MNIST", (0.1307,), (0.3081,)),
    "fashion-mnist": ("FashionMNIST", "Fashion-MNIST", (0.2860,), (0.3530,)),
    "cifar10": ("CIFAR10", "CIFAR-10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", "CIFAR-100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}




def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator behind all randomness of one epoch: a pure function of (seed, epoch)."""
    generator = torch.Generator()
    generator.manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return generator


# ---------------------------------------------------------------------------------------
# Batch sources


class BatchSource(ABC):
    """An epoch-indexed stream of ``(x float32, y int64)`` batches already on ``device``.

    Batches may share memory with the stored data set: never modify them in place.
    """

    num_samples: int
    batch_size: int
    device: torch.device
    drop_last: bool = False  # drop each epoch's last, partial batch (training sources only)
    # (rank, world size) under DDP: batches() yields this rank's contiguous share of each
    # global batch of ``batch_size`` (clrctl.engine.ddp.shard_data); None in one process.
    shard: Optional[tuple[int, int]] = None

    def __len__(self) -> int:
        """Batches per epoch; the last, partial batch is kept unless ``drop_last``."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def _end(self) -> int:
        """Samples used per epoch: all of them, or the full batches only (``drop_last``)."""
        return len(self) * self.batch_size if self.drop_last else self.num_samples

    def global_batch_size(self, index: int) -> int:
        """Samples in the ``index``-th batch of an epoch, over all ranks (a last one is partial)."""
        return min(self.batch_size, self._end - index * self.batch_size)

    @abstractmethod
    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of ``epoch`` (shuffled and augmented by (seed, epoch) when training).

        ``start`` skips that many batches without loading them: a run resumed mid-epoch
        gets exactly the batches it had left.
        """

    @abstractmethod
    def head(self, n: int) -> "BatchSource":
        """The first ``n`` samples in a fixed order, without augmentation (an evaluation slice)."""

    def _share(self, begin: int) -> tuple[int, int]:
        """[lo, hi) sample positions of this rank's share of the global batch at ``begin``."""
        from clrctl.engine.ddp import shard_bounds

        size = min(self.batch_size, self._end - begin)
        lo, hi = shard_bounds(size, *self.shard)
        return begin + lo, begin + hi


class TensorSource(BatchSource):
    """A data set held as tensors on the device; batches are gathered and augmented there.

    ``x`` is float (already normalised) or uint8 images, which are scaled by 1/255 and
    normalised per batch with ``mean``/``std`` (per channel) so that CIFAR stays 150 MB.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        mean: Optional[tuple[float, ...]] = None,
        std: Optional[tuple[float, ...]] = None,
        eval_batch_size: Optional[int] = None,
        drop_last: bool = False,
    ) -> None:
        if augment and x.dim() != 4:
            raise ValueError("augmentation needs image batches (N, C, H, W)")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device, torch.float32 if y.is_floating_point() else torch.int64)  # float: regression
        self.num_samples = len(self.y)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.mean, self.std = mean, std
        self.drop_last = drop_last
        self._scale, self._shift = _affine(x, mean, std, self.device)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        size = self.batch_size
        if self.shard is not None:
            yield from self._shared_batches(epoch, start)
            return
        if not self.shuffle:
            for begin in range(start * size, self._end, size):
                yield self._normalise(self.x[begin : begin + size]), self.y[begin : begin + size]
            return
        order, crops = self._epoch_plan(epoch)
        for begin in range(start * size, self._end, size):
            index = order[begin : begin + size]
            x = self._normalise(self.x[index])
            if crops is not None:
                x = crop_flip(x, *(part[begin : begin + size] for part in crops))
            yield x, self.y[index]

    def head(self, n: int) -> "TensorSource":
        n = max(1, min(n, self.num_samples))
        return TensorSource(
            self.x[:n], self.y[:n], self.eval_batch_size, self.device, mean=self.mean, std=self.std
        )

    def _shared_batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's share of each batch of the epoch (DDP): the same permutation and crops
        as one process, cut per batch."""
        order, crops = self._epoch_plan(epoch) if self.shuffle else (None, None)
        for begin in range(start * self.batch_size, self._end, self.batch_size):
            lo, hi = self._share(begin)
            index = torch.arange(lo, hi, device=self.device) if order is None else order[lo:hi]
            x = self._normalise(self.x[index])
            if crops is not None:
                x = crop_flip(x, *(part[lo:hi] for part in crops))
            yield x, self.y[index]

    def _epoch_plan(self, epoch: int) -> tuple[Tensor, Optional[tuple[Tensor, Tensor, Tensor]]]:
        """The permutation and (with augment) per-position crop offsets and flips of an epoch.

        Drawn on the CPU from one generator, then moved once: the same stream on any device.
        """
        generator = epoch_generator(self.seed, epoch)
        order = torch.randperm(self.num_samples, generator=generator).to(self.device)
        if not self.augment:
            return order, None
        return order, random_crops(self.num_samples, generator, self.device)

    def _normalise(self, x: Tensor) -> Tensor:
        if self._scale is None:
            return x
        return x.to(torch.float32).mul_(self._scale).add_(self._shift)


def _affine(x: Tensor, mean, std, device) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """(scale, shift) with x_float = x * scale + shift, broadcast over (N, C, H, W)."""
    if x.dtype != torch.uint8:
        if mean is not None:
            raise ValueError("mean/std apply to uint8 images only; normalise float data up front")
        return None, None
    channels = x.shape[1]
    mean_t = torch.tensor(mean if mean is not None else (0.0,) * channels, dtype=torch.float32)
    std_t = torch.tensor(std if std is not None else (1.0,) * channels, dtype=torch.float32)
    shape = (1, channels) + (1,) * (x.dim() - 2)
    scale = (1.0 / (255.0 * std_t)).view(shape).to(device)
    shift = (-mean_t / std_t).view(shape).to(device)
    return scale, shift


def random_crops(n: int, generator: torch.Generator, device: torch.device, pad: int = CROP_PAD):
    """Per-sample (dy, dx, flip): crop offsets in [0, 2*pad] and a fair coin for the flip."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return dy.to(device), dx.to(device), flip.to(device)


def crop_flip(x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, pad: int = CROP_PAD) -> Tensor:
    """Random crop after ``pad`` pixels of reflection padding, then horizontal flip, batched.

    One gather does both: row index ``dy + i`` and column index ``dx + j`` (or
    ``dx + W-1-j`` when flipped) into the padded batch; no per-sample Python.
    """
    batch, channels, height, width = x.shape
    # Reflection needs pad < size; tiny images fall back to zero padding.
    mode = "reflect" if pad < min(height, width) else "constant"
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)
    rows = dy[:, None] + torch.arange(height, device=x.device)
    cols = torch.arange(width, device=x.device).expand(batch, width)
    cols = dx[:, None] + torch.where(flip[:, None], width - 1 - cols, cols)
    b = torch.arange(batch, device=x.device)[:, None, None, None]
    c = torch.arange(channels, device=x.device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


class _EpochSampler(torch.utils.data.Sampler):
    """Indices of one epoch from ``skip`` on: a permutation that is a pure function of
    (seed, epoch) when shuffling, else 0..n-1. Call ``set_epoch`` before iterating."""

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.skip, self.n))
        order = torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch))
        return iter(order[self.skip :].tolist())

    def __len__(self) -> int:
        return self.n - self.skip


class _SharedBatches(torch.utils.data.Sampler):
    """DDP: this rank's share of every global batch of the epoch (a batch sampler): the
    :class:`_EpochSampler` order from its ``skip`` on, cut per global batch as
    :class:`TensorSource` cuts its tensors, so the ranks together see exactly one process's batches."""

    def __init__(self, source: "LoaderSource") -> None:
        self.source = source

    def __iter__(self):
        source, skip = self.source, self.source._sampler.skip
        order = list(iter(source._sampler))  # positions skip, skip+1, …
        for begin in range(skip, source._end, source.batch_size):
            lo, hi = source._share(begin)
            yield order[lo - skip : hi - skip]

    def __len__(self) -> int:
        skip = self.source._sampler.skip
        return max(0, math.ceil((self.source._end - skip) / self.source.batch_size))


class LoaderSource(BatchSource):
    """A ``DataLoader`` over a map-style data set, batches moved to the device.

    The data set yields normalised float tensors; shuffling comes from an
    :class:`_EpochSampler`, and ``augment`` applies :func:`crop_flip` on the device with
    offsets drawn per (seed, epoch) — so worker processes hold no randomness of their own.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        device: torch.device,
        *,
        num_workers: int = 0,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        eval_batch_size: Optional[int] = None,
        drop_last: bool = False,
    ) -> None:
        self.dataset = dataset
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.num_samples = len(dataset)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self._sampler = _EpochSampler(self.num_samples, seed, shuffle)
        self._loader: Optional[torch.utils.data.DataLoader] = None  # built on first use

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        begin = min(start * self.batch_size, self.num_samples)
        self._sampler.set_epoch(epoch, skip=begin)
        if self.shard is not None:
            yield from self._shared_batches(epoch, begin)
            return
        crops = None
        if self.augment:
            # Drawn after the permutation from the same stream, as TensorSource does.
            generator = epoch_generator(self.seed, epoch)
            torch.randperm(self.num_samples, generator=generator)
            crops = random_crops(self.num_samples, generator, self.device)
        for x, y in _readable(self.loader):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, torch.float32 if y.is_floating_point() else torch.int64, non_blocking=True)
            if crops is not None:
                x = crop_flip(x, *(part[begin : begin + len(y)] for part in crops))
            begin += len(y)
            yield x, y

    def _shared_batches(self, epoch: int, begin: int) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's share of each global batch (DDP): a distributed version of the epoch
        sampler, cut per batch, with the crops of the shares' global positions."""
        crops = None
        if self.augment:
            generator = epoch_generator(self.seed, epoch)
            torch.randperm(self.num_samples, generator=generator)
            crops = random_crops(self.num_samples, generator, self.device)
        for x, y in _readable(self.loader):
            lo, hi = self._share(begin)
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, torch.int64, non_blocking=True)
            if crops is not None:
                x = crop_flip(x, *(part[lo:hi] for part in crops))
            begin += self.batch_size
            yield x, y

    @property
    def loader(self) -> torch.utils.data.DataLoader:
        if self._loader is None:
            if self.shard is not None:  # DDP: this rank's share of each global batch
                batching = dict(batch_sampler=_SharedBatches(self))
            else:  # the sampler skips whole batches, so drop_last drops the same one
                batching = dict(batch_size=self.batch_size, sampler=self._sampler, drop_last=self.drop_last)
            workers = self.num_workers
            self._loader = torch.utils.data.DataLoader(
                self.dataset, num_workers=workers, persistent_workers=workers > 0,
                pin_memory=self.device.type == "cuda", **batching)
        return self._loader

    def head(self, n: int) -> "LoaderSource":
        n = max(1, min(n, self.num_samples))
        subset = torch.utils.data.Subset(self.dataset, range(n))
        return LoaderSource(subset, self.eval_batch_size, self.device, num_workers=self.num_workers)


def _readable(loader: torch.utils.data.DataLoader):
    """The loader's batches; a :class:`DataError` from a worker process comes back as the
    one line it was raised with (DataLoader re-raises it wrapped in the worker's traceback)."""
    try:
        yield from loader
    except DataError as err:
        prefix = f"{DataError.__module__}.{DataError.__qualname__}: "
        line = str(err).strip().splitlines()[-1]
        raise DataError(line[len(prefix):] if line.startswith(prefix) else line) from None


# ---------------------------------------------------------------------------------------
# Building a data set


@dataclass
class DataBundle:
    train: BatchSource  # shuffled (and augmented) per (seed, epoch)
    val: BatchSource  # fixed order, no augmentation
    input_shape: tuple[int, ...]  # per sample: (C, H, W) or (F,)
    num_classes: int
    name: str


@dataclass
class _Arrays:
    """A data set as tensors: train/val splits, and the uint8 normalisation (None: float data)."""

    x: Tensor
    y: Tensor
    val_x: Tensor
    val_y: Tensor
    num_classes: int
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None


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
        arrays = _keep_classes(arrays, cfg.classes)
    if cfg.augment and arrays.x.dim() != 4:
        raise ConfigError(f"dataset.augment: random crop and flip need images; {cfg.name!r} has flat features")
    norm = dict(mean=arrays.mean, std=arrays.std)
    train = TensorSource(
        arrays.x, arrays.y, cfg.batch_size, device, shuffle=True, augment=cfg.augment, seed=seed,
        eval_batch_size=cfg.eval_batch_size, drop_last=cfg.drop_last, **norm,
    )  # fmt: skip
    _check_batches(train, cfg)
    val = TensorSource(arrays.val_x, arrays.val_y, cfg.eval_batch_size, device, **norm)
    return DataBundle(train, val, tuple(arrays.x.shape[1:]), arrays.num_classes, cfg.name)


def _keep_classes(arrays: _Arrays, classes: list[int]) -> _Arrays:
    """Only the samples of ``classes``, relabelled 0..k-1 in that order (``dataset.classes``):
    e.g. pretrain on digits 0-5 and fine-tune a new head on 6-9."""
    if max(classes) >= arrays.num_classes:
        raise ConfigError(f"dataset.classes: label {max(classes)} does not exist "
                          f"(this data set has labels 0..{arrays.num_classes - 1})")
    relabel = torch.full((arrays.num_classes,), -1, dtype=torch.int64)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))

    def keep(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        mask = relabel[y] >= 0
        return x[mask], relabel[y[mask]]

    (x, y), (val_x, val_y) = keep(arrays.x, arrays.y), keep(arrays.val_x, arrays.val_y)
    return _Arrays(x, y, val_x, val_y, len(classes), arrays.mean, arrays.std)


def _check_batches(train: BatchSource, cfg: DatasetConfig) -> None:
    if len(train) == 0:  # only with drop_last: no full batch at all
        raise ConfigError(f"dataset.drop_last: batch_size {cfg.batch_size} is larger than the "
                          f"{train.num_samples} training samples, so no batch is left")


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
    return _Arrays(x[train], y[train], x[val], y[val], num_classes=10)


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
    return _Arrays(x[train], y[train], x[val], y[val], num_classes=classes)


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

    return _Arrays(
        images(train.data), labels(train.targets), images(test.data), labels(test.targets),
        num_classes=len(train.classes), mean=mean, std=std,
    )  # fmt: skip


# The MNIST family: read from IDX files by clrctl.data.idx, 10 classes each.
_IDX_SETS = ("mnist", "fashion-mnist")


def _idx_arrays(cfg: DatasetConfig) -> _Arrays:
    """MNIST / Fashion-MNIST's official train / test splits as uint8 (N, 1, 28, 28)."""
    from clrctl.data.idx import read_split

    _, label, mean, std = _TORCHVISION_SETS[cfg.name]
    directory, files = _idx_location(cfg)
    try:
        (x, y), (val_x, val_y) = read_split(files, "train"), read_split(files, "test")
    except ValueError as err:
        raise ConfigError(f"dataset.root: cannot read the {label} files under '{directory}': {err}") from None
    return _Arrays(x, y, val_x, val_y, num_classes=10, mean=mean, std=std)


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
    _check_batches(train, cfg)
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
