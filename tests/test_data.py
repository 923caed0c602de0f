"""clrctl.data.datasets: splits, normalisation, (seed, epoch)-pure batching and augmentation, and the
real torchvision / ImageFolder loaders driven on tiny files written here."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from clrctl.config.schema import DatasetConfig
from clrctl.data.datasets import build_data, import_torchvision
from clrctl.data.sources import TensorSource, crop_flip
from clrctl.errors import ConfigError

CPU = torch.device("cpu")


def digits(seed: int = 0, **overrides):
    return build_data(DatasetConfig(name="digits", **overrides), seed, CPU)


def epoch(source, n: int):
    """All (x, y) of epoch ``n`` concatenated."""
    xs, ys = zip(*source.batches(n))
    return torch.cat(xs), torch.cat(ys)


# ---------------------------------------------------------------------------------------
# digits and TensorSource


def test_digits_sizes_and_shapes():
    bundle = digits(val_fraction=0.25, batch_size=32)
    assert (bundle.train.num_samples, bundle.val.num_samples) == (1347, 450)
    assert len(bundle.train) == 43  # ceil(1347 / 32), last partial batch kept
    assert (bundle.input_shape, bundle.num_classes, bundle.name) == ((1, 8, 8), 10, "digits")
    batches = list(bundle.train.batches(0))
    assert len(batches) == 43 and len(batches[-1][1]) == 1347 - 42 * 32
    x, y = batches[0]
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.device == CPU and y.device == CPU


def test_digits_normalised_with_train_statistics():
    bundle = digits()
    x, _ = epoch(bundle.train, 0)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    val_x, _ = epoch(bundle.val, 0)
    assert abs(val_x.mean().item()) < 0.1  # same transform, other samples: close, not exact


def test_digits_split_is_stratified():
    bundle = digits(val_fraction=0.25)
    train_counts = torch.bincount(epoch(bundle.train, 0)[1], minlength=10)
    val_counts = torch.bincount(epoch(bundle.val, 0)[1], minlength=10)
    share = val_counts.float() / (train_counts + val_counts).float()
    assert torch.all((share - 0.25).abs() < 0.02), share


def test_same_seed_same_batches_other_epoch_or_seed_other_order():
    first, second = digits(seed=3), digits(seed=3)
    for a, b in zip(first.train.batches(5), second.train.batches(5)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    y5 = epoch(first.train, 5)[1]
    assert not torch.equal(y5, epoch(first.train, 6)[1])
    assert torch.equal(y5, epoch(first.train, 5)[1])  # replay without any RNG state
    assert not torch.equal(y5, epoch(digits(seed=4).train, 5)[1])


def test_start_skips_batches_of_the_same_epoch():
    # A run resumed mid-epoch asks for the rest of the epoch and gets exactly it.
    for source in (digits(seed=2, augment=True).train, digits(eval_batch_size=32).val):
        full = list(source.batches(4))
        rest = list(source.batches(4, start=5))
        assert len(rest) == len(full) - 5
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[5:], rest))
    assert list(digits().train.batches(0, start=43)) == []


def test_val_is_fixed_order():
    val = digits().val
    assert torch.equal(epoch(val, 0)[0], epoch(val, 7)[0])


def test_every_sample_once_per_epoch_last_batch_kept():
    ids = torch.arange(10)
    source = TensorSource(ids.float().unsqueeze(1), ids, 3, CPU, shuffle=True, seed=1)
    assert len(source) == 4
    sizes = [len(y) for _, y in source.batches(2)]
    assert sizes == [3, 3, 3, 1]
    x, y = epoch(source, 2)
    assert torch.equal(x.squeeze(1).long(), y)  # x and y stay paired
    assert torch.equal(y.sort().values, ids) and not torch.equal(y, ids)


def test_head_is_fixed_first_samples_without_augmentation():
    ids = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 1, 6, 6).contiguous()
    source = TensorSource(ids, torch.arange(20), 4, CPU, shuffle=True, augment=True, eval_batch_size=3)
    head = source.head(7)
    assert head.num_samples == 7 and len(head) == 3  # batches of eval_batch_size
    x, y = epoch(head, 0)
    assert torch.equal(y, torch.arange(7)) and torch.equal(epoch(head, 9)[1], y)
    assert torch.allclose(x, ids[:7].float() / 255)  # un-augmented, scaled uint8
    assert source.head(100).num_samples == 20


def test_uint8_images_are_normalised_per_channel_on_the_fly():
    x = torch.full((2, 2, 3, 3), 51, dtype=torch.uint8)  # 51 / 255 = 0.2
    source = TensorSource(x, torch.zeros(2), 2, CPU, mean=(0.1, 0.2), std=(0.5, 0.25))
    assert source.x.dtype == torch.uint8  # stored compactly, converted per batch
    batch = next(source.batches(0))[0]
    assert torch.allclose(batch[:, 0], torch.tensor(0.2)) and torch.allclose(batch[:, 1], torch.tensor(0.0), atol=1e-6)


# ---------------------------------------------------------------------------------------
# augmentation


def test_crop_flip_exact_cases():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    centre = torch.tensor([4, 4])
    assert torch.equal(crop_flip(x, centre, centre, torch.tensor([False, False])), x)
    assert torch.equal(crop_flip(x, centre, centre, torch.tensor([True, False]))[0], x[0].flip(-1))
    # Offset (0, 4): shifted down by 4 rows, with reflection padding above.
    shifted = crop_flip(x, torch.tensor([0, 0]), centre, torch.tensor([False, False]))
    assert torch.equal(shifted[:, :, 4:], x[:, :, :1]) and torch.equal(shifted[:, :, 3], x[:, :, 1])


def test_augmentation_keeps_shapes_differs_and_replays():
    plain, augmented = digits(seed=1), digits(seed=1, augment=True)
    (x0, y0), (xa, ya) = next(plain.train.batches(2)), next(augmented.train.batches(2))
    assert xa.shape == x0.shape and xa.dtype == torch.float32
    assert torch.equal(ya, y0)  # same order: augmentation draws after the permutation
    assert not torch.equal(xa, x0)
    again = next(digits(seed=1, augment=True).train.batches(2))[0]
    assert torch.equal(xa, again)
    assert not torch.equal(next(augmented.train.batches(3))[0][: len(ya)], xa)
    assert torch.equal(epoch(augmented.val, 0)[0], epoch(plain.val, 0)[0])  # val never augmented


def test_augment_on_flat_data_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^dataset\.augment: "):
        build_data(DatasetConfig(name="synthetic", augment=True), 0, CPU)


# ---------------------------------------------------------------------------------------
# synthetic


def test_synthetic_sizes_and_seeding():
    cfg = DatasetConfig(name="synthetic", num_samples=500, num_features=7, num_classes=3, val_fraction=0.2)
    bundle = build_data(cfg, 0, CPU)
    assert (bundle.train.num_samples, bundle.val.num_samples) == (400, 100)
    assert (bundle.input_shape, bundle.num_classes) == ((7,), 3)
    assert torch.equal(epoch(bundle.val, 0)[0], epoch(build_data(cfg, 0, CPU).val, 0)[0])
    assert not torch.equal(epoch(bundle.val, 0)[0], epoch(build_data(cfg, 1, CPU).val, 0)[0])


def test_synthetic_is_learnable_by_a_small_mlp():
    bundle = build_data(DatasetConfig(name="synthetic", num_samples=1024, batch_size=32), 0, CPU)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps = 0
    for n in range(100):
        for x, y in bundle.train.batches(n):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        if steps >= 200:
            break
    with torch.no_grad():
        x, y = epoch(bundle.val, 0)
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.8  # chance is 0.1


# ---------------------------------------------------------------------------------------
# torchvision data sets on tiny real files


def write_idx(path: Path, array: np.ndarray) -> None:
    """The raw MNIST format: magic (0, 0, 0x08 = uint8, ndim), big-endian dims, data; gzip'd
    when the name ends in .gz (as Debian's dataset-fashion-mnist ships it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_mnist(root: Path, folder: str, n_train: int = 20, n_test: int = 10, gz: bool = False,
                seed: int = 0) -> np.ndarray:
    """Tiny IDX files in ``root/folder`` (``folder`` "" : side by side in ``root``, Debian's layout)."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw" if folder else root
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28))
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10)
    return images  # the test images


@pytest.mark.parametrize(
    "name, folder, mean, std",
    [("mnist", "MNIST", 0.1307, 0.3081), ("fashion-mnist", "FashionMNIST", 0.2860, 0.3530)],
)
def test_mnist_family_from_idx_files(tmp_path, name, folder, mean, std):
    test_images = write_mnist(tmp_path, folder)
    bundle = build_data(DatasetConfig(name=name, root=str(tmp_path), batch_size=8), 0, CPU)
    assert (bundle.train.num_samples, bundle.val.num_samples, len(bundle.train)) == (20, 10, 3)
    assert (bundle.input_shape, bundle.num_classes) == ((1, 28, 28), 10)
    x, y = epoch(bundle.val, 0)  # the official test split, in file order
    expected = (torch.tensor(test_images, dtype=torch.float32) / 255 - mean) / std
    assert torch.allclose(x.squeeze(1), expected, atol=1e-5)
    assert torch.equal(y, torch.arange(10))


def write_cifar(root: Path, hundred: bool, per_batch: int = 2, n_test: int = 4) -> None:
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"

    def dump(name: str, n: int, first_label: int) -> None:
        # Channel c of every image holds the value 10 * (c + 1): checks the CHW permutation.
        planes = np.repeat(np.array([10, 20, 30], dtype=np.uint8), 32 * 32)
        entry = {"data": np.tile(planes, (n, 1)), label_key: [first_label + i for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry))

    train_files = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    for i, name in enumerate(train_files):
        dump(name, per_batch, i * per_batch)
    dump("test" if hundred else "test_batch", n_test, 0)
    meta_name, meta_key = ("meta", "fine_label_names") if hundred else ("batches.meta", "label_names")
    (folder / meta_name).write_bytes(pickle.dumps({meta_key: [f"c{i}" for i in range(100 if hundred else 10)]}))


@pytest.fixture
def no_md5(monkeypatch):
    # torchvision's CIFAR checks every file against the md5 of the real archive; these tiny
    # stand-ins cannot match, so keep only its "file exists" part of the check.
    import os

    cifar = import_torchvision().datasets.cifar
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


@pytest.mark.parametrize("name, hundred, mean, std", [
    ("cifar10", False, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    ("cifar100", True, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
])  # fmt: skip
def test_cifar_from_pickled_batches(tmp_path, no_md5, name, hundred, mean, std):
    write_cifar(tmp_path, hundred)
    bundle = build_data(DatasetConfig(name=name, root=str(tmp_path), batch_size=4, augment=True), 0, CPU)
    assert (bundle.train.num_samples, bundle.val.num_samples) == ((2 if hundred else 10), 4)
    assert (bundle.input_shape, bundle.num_classes) == ((3, 32, 32), 100 if hundred else 10)
    x, y = epoch(bundle.val, 0)
    expected = (torch.tensor([10.0, 20.0, 30.0]) / 255 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(x[:, :, 5, 7], expected.expand(4, 3), atol=1e-5)
    assert torch.equal(y, torch.arange(4))
    train_x, _ = next(bundle.train.batches(0))
    assert train_x.shape == (min(4, bundle.train.num_samples), 3, 32, 32)


def test_corrupt_mnist_file_is_a_config_error(tmp_path):
    write_mnist(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x0c\x01junk")
    with pytest.raises(ConfigError, match=r"^dataset\.root: cannot read the MNIST files under "):
        build_data(DatasetConfig(name="mnist", root=str(tmp_path)), 0, CPU)


@pytest.mark.parametrize("name, label", [
    ("mnist", "MNIST"), ("fashion-mnist", "Fashion-MNIST"), ("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100"),
])  # fmt: skip
def test_missing_torchvision_data_is_a_one_line_config_error(tmp_path, name, label):
    with pytest.raises(ConfigError) as info:
        build_data(DatasetConfig(name=name, root=str(tmp_path / "nowhere")), 0, CPU)
    message = str(info.value)
    assert message.startswith(f"dataset.root: no {label} data under '{tmp_path / 'nowhere'}'")
    assert "dataset.download: true" in message and "\n" not in message


# ---------------------------------------------------------------------------------------
# Fashion-MNIST offline: data/, then Debian's dataset-fashion-mnist (SPEC "Real data offline")

SYSTEM_ENV = "CLRCTL_FASHION_MNIST_DIR"  # clrctl.data.idx.SYSTEM_DATA: overrides /usr/share/datasets/fashion-mnist


@pytest.fixture
def no_root(tmp_path, monkeypatch):
    """A working directory with no data/, and an empty stand-in for the system location."""
    work, system = tmp_path / "work", tmp_path / "system"
    work.mkdir()
    system.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv(SYSTEM_ENV, str(system))
    return work, system


def val_images(bundle) -> torch.Tensor:
    return bundle.val.x.squeeze(1)


def test_gzipped_files_in_torchvision_layout(tmp_path):
    test_images = write_mnist(tmp_path, "FashionMNIST", gz=True)
    bundle = build_data(DatasetConfig(name="fashion-mnist", root=str(tmp_path), batch_size=8), 0, CPU)
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.num_classes) == (20, 10, 10)
    assert torch.equal(val_images(bundle), torch.tensor(test_images, dtype=torch.uint8))
    assert torch.equal(bundle.val.y, torch.arange(10))


def test_no_root_reads_the_system_package_in_place(no_root):
    _, system = no_root
    test_images = write_mnist(system, "", gz=True)  # Debian's layout: four .gz files side by side
    before = sorted(os.listdir(system))
    bundle = build_data(DatasetConfig(name="fashion-mnist", batch_size=8), 0, CPU)
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.input_shape) == (20, 10, (1, 28, 28))
    assert torch.equal(val_images(bundle), torch.tensor(test_images, dtype=torch.uint8))
    assert sorted(os.listdir(system)) == before and not Path("data").exists()  # no copy, no unpack


def test_no_root_prefers_data_dir_over_the_system_package(no_root):
    work, system = no_root
    write_mnist(system, "", gz=True, seed=1)
    local = write_mnist(work / "data", "FashionMNIST", n_test=6)  # unpacked, torchvision's layout
    bundle = build_data(DatasetConfig(name="fashion-mnist"), 0, CPU)
    assert torch.equal(val_images(bundle), torch.tensor(local, dtype=torch.uint8))


def test_an_explicit_root_never_falls_back_to_the_system_package(no_root, tmp_path):
    _, system = no_root
    write_mnist(system, "", gz=True)
    with pytest.raises(ConfigError, match=r"^dataset\.root: no Fashion-MNIST data under "):
        build_data(DatasetConfig(name="fashion-mnist", root=str(tmp_path / "elsewhere")), 0, CPU)


def test_root_may_point_at_the_files_themselves(tmp_path):
    write_mnist(tmp_path, "", gz=True)  # e.g. dataset.root: /usr/share/datasets/fashion-mnist
    assert build_data(DatasetConfig(name="fashion-mnist", root=str(tmp_path)), 0, CPU).val.num_samples == 10


def test_no_data_anywhere_names_the_package_and_dataset_root(no_root):
    with pytest.raises(ConfigError) as info:
        build_data(DatasetConfig(name="fashion-mnist"), 0, CPU)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "dataset.root" in message
    assert "\n" not in message


def test_cli_without_data_exits_2_with_one_line_and_no_run_dir(no_root):
    import subprocess
    import sys

    work, _ = no_root
    config = Path(__file__).resolve().parents[1] / "configs" / "fashion-lenet-one_cycle.yaml"
    done = subprocess.run([sys.executable, "-m", "clrctl", "train", str(config), "device=cpu"],
                          cwd=work, capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install dataset-fashion-mnist" in lines[0] and "dataset.root" in lines[0]
    assert not (work / "runs").exists()


def test_preview_of_the_bundled_config_needs_no_data(no_root, capsys):
    from conftest import CONFIGS, run_cli

    assert run_cli("preview", CONFIGS / "fashion-lenet-one_cycle.yaml", "--rows", "2") == 0
    assert capsys.readouterr().out.startswith("one_cycle: 938 steps (469 per epoch)")  # 60,000 / 128


def test_broken_gzip_is_a_one_line_config_error_naming_the_file(tmp_path):
    write_mnist(tmp_path, "FashionMNIST", gz=True)
    broken = tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:40])  # a download cut short
    with pytest.raises(ConfigError, match=r"^dataset\.root: cannot read the Fashion-MNIST files under .*"
                                          r"t10k-images-idx3-ubyte\.gz: [^\n]+$"):
        build_data(DatasetConfig(name="fashion-mnist", root=str(tmp_path)), 0, CPU)


def test_idx_reader_equals_torchvisions_on_unpacked_and_gzipped_files(tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    from clrctl.data.idx import read_idx

    write_mnist(tmp_path / "plain", "MNIST")
    write_mnist(tmp_path / "gz", "MNIST", gz=True)
    for name, reference in (("t10k-images-idx3-ubyte", read_image_file), ("train-labels-idx1-ubyte", read_label_file)):
        expected = reference(str(tmp_path / "plain" / "MNIST" / "raw" / name))
        assert torch.equal(read_idx(tmp_path / "plain" / "MNIST" / "raw" / name), expected)
        assert torch.equal(read_idx(tmp_path / "gz" / "MNIST" / "raw" / f"{name}.gz"), expected)


REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (REAL_FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_reads_the_real_debian_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here: the system location it is
    monkeypatch.delenv(SYSTEM_ENV, raising=False)
    bundle = build_data(DatasetConfig(name="fashion-mnist", batch_size=128), 0, CPU)
    assert (bundle.train.num_samples, bundle.val.num_samples) == (60_000, 10_000)
    assert bundle.train.x.shape == (60_000, 1, 28, 28) and bundle.train.x.dtype == torch.uint8
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    for y in (bundle.train.y, bundle.val.y):
        assert torch.equal(torch.unique(y), torch.arange(10))
    assert torch.bincount(bundle.val.y).tolist() == [1000] * 10  # the test split is balanced
    assert len(bundle.train) == 469  # as known_steps_per_epoch says, without the data


# ---------------------------------------------------------------------------------------
# imagefolder


def write_images(folder: Path, classes=("cat", "dog"), per_class: int = 3) -> None:
    from PIL import Image

    rng = np.random.default_rng(len(str(folder)))
    for cls in classes:
        (folder / cls).mkdir(parents=True)
        for i in range(per_class):
            # Noise, so that crops and flips change pixels; mixed sizes and modes, so that
            # Resize and the RGB conversion must even them out.
            shape = (7, 9) if i == 0 else (10, 12, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / cls / f"{i}.png")


def folder_cfg(root: Path, **overrides) -> DatasetConfig:
    settings = dict(name="imagefolder", root=str(root), image_size=8, batch_size=4, num_workers=0)
    return DatasetConfig(**{**settings, **overrides})


def test_imagefolder_train_val_folders(tmp_path):
    write_images(tmp_path / "train")
    write_images(tmp_path / "val", per_class=2)
    bundle = build_data(folder_cfg(tmp_path), 0, CPU)
    assert (bundle.train.num_samples, bundle.val.num_samples, len(bundle.train)) == (6, 4, 2)
    assert (bundle.input_shape, bundle.num_classes) == ((3, 8, 8), 2)
    x, y = next(bundle.train.batches(0))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1  # Normalize(0.5, 0.5)
    assert sorted(epoch(bundle.val, 0)[1].tolist()) == [0, 0, 1, 1]
    assert torch.equal(epoch(bundle.train, 3)[1], epoch(build_data(folder_cfg(tmp_path), 0, CPU).train, 3)[1])
    head_x, head_y = epoch(bundle.val.head(3), 0)
    assert head_x.shape == (3, 3, 8, 8) and torch.equal(head_y, epoch(bundle.val, 1)[1][:3])
    assert torch.equal(head_x, epoch(bundle.val, 0)[0][:3])


def test_imagefolder_head_mixes_classes(tmp_path):
    # ImageFolder lists class by class; the stored order is a seeded shuffle, so that the
    # range test's evaluation slice, head(n), is not all one class.
    write_images(tmp_path / "train", classes=("a", "b"), per_class=8)
    write_images(tmp_path / "val", classes=("a", "b"), per_class=8)
    bundle = build_data(folder_cfg(tmp_path), 0, CPU)
    assert len(set(epoch(bundle.val.head(6), 0)[1].tolist())) == 2


def test_imagefolder_without_split_folders_is_split_by_seed(tmp_path):
    write_images(tmp_path, classes=("a", "b"), per_class=4)
    bundle = build_data(folder_cfg(tmp_path, val_fraction=0.25), 0, CPU)
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.num_classes) == (6, 2, 2)
    assert sorted(epoch(bundle.val, 0)[1].tolist()) == [0, 1]  # stratified


def test_imagefolder_workers_and_augmentation_replay_exactly(tmp_path):
    write_images(tmp_path / "train")
    write_images(tmp_path / "val", per_class=1)
    in_process = build_data(folder_cfg(tmp_path, augment=True), 5, CPU)
    with_worker = build_data(folder_cfg(tmp_path, augment=True, num_workers=1), 5, CPU)
    for n in (0, 1):  # the second epoch reuses the persistent worker
        a, b = epoch(in_process.train, n), epoch(with_worker.train, n)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    rest = list(with_worker.train.batches(1, start=1))  # resumed mid-epoch
    assert len(rest) == 1 and torch.equal(rest[0][0], list(in_process.train.batches(1))[1][0])
    plain = build_data(folder_cfg(tmp_path), 5, CPU)
    assert not torch.equal(epoch(plain.train, 1)[0], epoch(in_process.train, 1)[0])


@pytest.mark.parametrize("layout", ["missing", "empty", "no-images"])
def test_imagefolder_missing_or_empty_root_is_a_config_error(tmp_path, layout):
    root = tmp_path / "images"
    if layout != "missing":
        root.mkdir()
    if layout == "no-images":
        (root / "cat").mkdir()
        (root / "cat" / "notes.txt").write_text("no image here")
    with pytest.raises(ConfigError, match=r"^dataset\.root: ") as info:
        build_data(folder_cfg(root), 0, CPU)
    assert "\n" not in str(info.value)
