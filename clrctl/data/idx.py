"""The MNIST family's IDX files (MNIST, Fashion-MNIST): where they are, and reading them.

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a magic number
``0, 0, type, ndim`` (type 0x08 = uint8), ``ndim`` big-endian uint32 sizes, then the data
in C order. The files are read as they are, unpacked or gzip'd (``.gz``), straight into
uint8 tensors: nothing is copied or unpacked on disk.

Where they are looked for, in order (SPEC "Real data offline"):

1. ``ROOT/<torchvision folder>/raw/`` (torchvision's layout: ``data/FashionMNIST/raw/``),
2. ``ROOT/`` itself (the files side by side, as a system package installs them),
3. when ``dataset.root`` is left at its default ``data``: the directory a system package
   installs the data set into — Debian's ``dataset-fashion-mnist`` puts the gzip'd files in
   ``/usr/share/datasets/fashion-mnist/``. The environment variable named in
   :data:`SYSTEM_DATA` (``CLRCTL_FASHION_MNIST_DIR``) points that look-up elsewhere.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import NamedTuple, Optional

import torch
from torch import Tensor

# (images, labels) file names per split: LeCun's names, which torchvision and Debian keep.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UINT8 = 0x08  # the only IDX element type the MNIST family uses


class SystemData(NamedTuple):
    package: str  # the Debian package that installs the files
    directory: str  # where it installs them
    env: str  # the environment variable that overrides ``directory``


SYSTEM_DATA = {
    "fashion-mnist": SystemData("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist",
                                "CLRCTL_FASHION_MNIST_DIR"),
}


def system_directory(name: str) -> Optional[Path]:
    """Where the system package of data set ``name`` installs it (None: there is none)."""
    entry = SYSTEM_DATA.get(name)
    if entry is None:
        return None
    return Path(os.environ.get(entry.env) or entry.directory)


def candidate_directories(name: str, folder: str, root: str, root_is_default: bool) -> list[Path]:
    """The directories to look in, in order: torchvision's layout under ``root``, ``root``
    itself, then (default root only) the system package's directory."""
    candidates = [Path(root) / folder / "raw", Path(root)]
    system = system_directory(name) if root_is_default else None
    return candidates + ([system] if system is not None else [])


def find_files(directory: Path) -> Optional[dict[str, Path]]:
    """Each IDX file's path in ``directory`` (unpacked preferred, else ``.gz``), or None when
    one of the four is in neither form."""
    found = {}
    for names in IDX_FILES.values():
        for name in names:
            path = next((p for p in (directory / name, directory / f"{name}.gz") if p.is_file()), None)
            if path is None:
                return None
            found[name] = path
    return found


def read_idx(path: Path) -> Tensor:
    """An IDX file of uint8 (``.gz``: read through gzip) as a tensor of its shape.

    Raises ``ValueError`` (a wrong magic number or length), ``OSError`` or ``EOFError`` (a
    broken gzip stream): the caller names the file in one line.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UINT8:
        raise ValueError("not an IDX file of uint8 (its magic number is wrong)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"the header of {ndim} sizes is cut short")
    shape = struct.unpack_from(f">{ndim}I", data, 4)
    if len(data) - header != math.prod(shape):
        raise ValueError(f"expected {math.prod(shape)} bytes of data for shape {list(shape)}, "
                         f"found {len(data) - header}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(shape)


def read_split(files: dict[str, Path], split: str) -> tuple[Tensor, Tensor]:
    """(images uint8 (N, 1, H, W), labels int64 (N,)) of ``split`` (train / test)."""
    images_name, labels_name = IDX_FILES[split]
    images, labels = _read_named(files[images_name]), _read_named(files[labels_name])
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise ValueError(f"{images_name} holds {list(images.shape)} but {labels_name} {list(labels.shape)}: "
                         "expected (N, H, W) images and N labels")
    return images.unsqueeze(1), labels.to(torch.int64)


def _read_named(path: Path) -> Tensor:
    """:func:`read_idx`, its failures as one ``ValueError`` line that names the file."""
    try:
        return read_idx(path)
    except (ValueError, OSError, EOFError, zlib.error) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path.name}: {reason}") from None
