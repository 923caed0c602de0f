"""Batch sources: an epoch-indexed stream of ``(x float32, y int64)`` batches on the device.

What every data set becomes, built-in (:mod:`clrctl.data.datasets`) or the user's own
(:mod:`clrctl.data.userdata`), and what the trainer and the range test consume:

- :class:`TensorSource` keeps a whole data set as tensors on the device and batches there
  (the KellerJordan/cifar10-airbench style). Image data stay uint8 on the device and are
  normalised per batch.
- :class:`LoaderSource` wraps a ``torch.utils.data.DataLoader`` with worker processes for
  map-style data sets that do not fit that mould (image folders, the user's Datasets).
- :class:`DataBundle` pairs a training and a validation source with the input shape and
  the number of classes; :class:`Arrays` is a data set as tensors before it becomes sources.

Every random choice of an epoch (the shuffle order, the crop offsets and flips of
``dataset.augment``: :func:`random_crops`, :func:`crop_flip`) is a pure function of
``(seed, epoch)`` (:func:`epoch_generator`): a resumed run replays the same batches without
restoring any RNG state, and two runs with one seed see one stream.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from clrctl.errors import ConfigError, DataError

if TYPE_CHECKING:
    from clrctl.config.schema import DatasetConfig

# Padding of the random crop (pixels per side), as in He et al. 2015 and airbench.
CROP_PAD = 4


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator behind all randomness of one epoch: a pure function of (seed, epoch)."""
    generator = torch.Generator()
    generator.manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return generator


# ---------------------------------------------------------------------------------------
# Batch sources


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi) of rank's share of ``n`` items, as ``torch.tensor_split`` cuts them."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


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


class StackedBatches:
    """The batches of K sources at once, stacked: (K, B, …) inputs and (K, B) targets, each
    source in its own (seed, epoch) order (a vectorised seed group). Tensor sources without
    augmentation are gathered in one indexing a step (from one data set when the K share
    it, else from the K data sets stacked once, here); any other source batch by batch."""

    def __init__(self, sources: list[BatchSource]):
        self.sources = list(sources)
        first = self.sources[0]
        self.plain = all(type(s) is TensorSource and s.shuffle and not s.augment and s.shard is None
                         and s.x.shape == first.x.shape and s.x.dtype == first.x.dtype
                         and s.batch_size == first.batch_size and s._end == first._end
                         and s.mean == first.mean and s.std == first.std for s in self.sources)
        self.shared = self.plain and all(s.x.data_ptr() == first.x.data_ptr() and s.y.data_ptr() == first.y.data_ptr()
                                         for s in self.sources)
        self._xs = self._ys = None
        self._orders: Optional[Tensor] = None  # (K, N): the epoch's orders, one row a source
        self._iters: list = []  # (sources batched one by one: each one's batches of the epoch)
        if self.plain and not self.shared:
            self._xs = torch.stack([s.x for s in self.sources])
            self._ys = torch.stack([s.y for s in self.sources])

    def remove(self, index: int) -> None:
        """Source ``index`` leaves (its seed ended), also from the epoch under way."""
        keep = [k for k in range(len(self.sources)) if k != index]
        del self.sources[index]
        if self._xs is not None:
            self._xs, self._ys = self._xs[keep], self._ys[keep]
        if self._orders is not None:
            self._orders = self._orders[keep]
        if self._iters:
            del self._iters[index]

    def _offsets(self, k: int) -> Tensor:
        if getattr(self, "_offset_k", None) != k:
            self._offset_k = k
            self._offset = torch.arange(k, device=self.sources[0].device).unsqueeze(1) * self.sources[0].num_samples
        return self._offset

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        sources = self.sources
        if not self.plain:
            self._iters = [s.batches(epoch, start) for s in sources]
            while True:
                if not self._iters:
                    return
                try:
                    batches = [next(it) for it in self._iters]
                except StopIteration:
                    return
                yield torch.stack([x for x, _ in batches]), torch.stack([y for _, y in batches])
        first = sources[0]
        self._orders = torch.stack([s._epoch_plan(epoch)[0] for s in sources])  # (K, N)
        size = first.batch_size
        for begin in range(start * size, first._end, size):
            orders, k = self._orders, len(self.sources)  # (a source may have left since the last batch)
            if not k:
                return
            if self.shared:
                xs, ys, index = first.x, first.y, orders[:, begin:begin + size].reshape(-1)
            else:  # positions in the K data sets laid end to end: one index_select a step
                xs, ys = self._xs.flatten(0, 1), self._ys.flatten(0, 1)
                index = (orders[:, begin:begin + size] + self._offsets(k)).reshape(-1)
            x, y = xs.index_select(0, index), ys.index_select(0, index)
            b = x.shape[0] // k
            yield first._normalise(x).reshape(k, b, *x.shape[1:]), y.reshape(k, b, *y.shape[1:])


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
        crops = self._epoch_crops(epoch)
        for x, y in _readable(self.loader):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, torch.float32 if y.is_floating_point() else torch.int64, non_blocking=True)
            if crops is not None:
                x = crop_flip(x, *(part[begin : begin + len(y)] for part in crops))
            begin += len(y)
            yield x, y

    def _epoch_crops(self, epoch: int):
        """The epoch's crop offsets and flips (None without augmentation), drawn after the
        permutation from the same (seed, epoch) stream, as TensorSource draws them."""
        if not self.augment:
            return None
        generator = epoch_generator(self.seed, epoch)
        torch.randperm(self.num_samples, generator=generator)
        return random_crops(self.num_samples, generator, self.device)

    def _shared_batches(self, epoch: int, begin: int) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's share of each global batch (DDP): a distributed version of the epoch
        sampler, cut per batch, with the crops of the shares' global positions."""
        crops = self._epoch_crops(epoch)
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


class ResizedSource(BatchSource):
    """Another source's image batches resized to ``size`` x ``size`` on the device (bilinear,
    antialiased; a stage's ``dataset.image_size`` on tensor images): the same samples in the
    same order, crops and flips drawn as before at the stored size."""

    def __init__(self, inner: BatchSource, size: int) -> None:
        self.inner, self.size = inner, size
        self.num_samples, self.batch_size, self.device = inner.num_samples, inner.batch_size, inner.device
        self.drop_last = inner.drop_last

    @property
    def shard(self):  # (DDP shards the inner source: one place holds the rank's share)
        return self.inner.shard

    @shard.setter
    def shard(self, value) -> None:
        self.inner.shard = value

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.inner.batches(epoch, start):
            yield resize_images(x, self.size), y

    def head(self, n: int) -> "ResizedSource":
        return ResizedSource(self.inner.head(n), self.size)


def resize_images(x: Tensor, size: int) -> Tensor:
    """A batch (N, C, H, W) at ``size`` x ``size``: bilinear, antialiased when shrinking."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


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
# Data sets as tensors, and the pair of sources a run trains on


@dataclass
class DataBundle:
    """What a data set gives a run: its two sources, the shape of one sample and the classes
    (the model's outputs: regression targets count their columns)."""

    train: BatchSource  # shuffled (and augmented) per (seed, epoch)
    val: BatchSource  # fixed order, no augmentation
    input_shape: tuple[int, ...]  # per sample: (C, H, W) or (F,)
    num_classes: int
    name: str


@dataclass
class Arrays:
    """A data set as tensors: train/val splits, and the uint8 normalisation (None: float data)."""

    x: Tensor
    y: Tensor
    val_x: Tensor
    val_y: Tensor
    num_classes: int
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None


def keep_classes(arrays: Arrays, classes: list[int]) -> Arrays:
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
    return Arrays(x, y, val_x, val_y, len(classes), arrays.mean, arrays.std)


def check_batches(train: BatchSource, cfg: DatasetConfig) -> None:
    """Refuse a training source that yields no batch (ConfigError naming ``dataset.drop_last``)."""
    if len(train) == 0:  # only with drop_last: no full batch at all
        raise ConfigError(f"dataset.drop_last: batch_size {cfg.batch_size} is larger than the "
                          f"{train.num_samples} training samples, so no batch is left")
