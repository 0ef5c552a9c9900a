"""Data sources: the JPEG archive and folder layouts, the cache, synthetic data, bad copies."""

from __future__ import annotations

import tarfile
import urllib.error

import pytest
import torch
from PIL import Image

from initbench import data
from initbench.data import DataError, augment, load_cifar10, subset, synthetic_dataset


def test_archive_slice_loads_balanced_and_in_label_order(cifar_slice, workdir):
    dataset = load_cifar10(cifar_slice, download=False)
    assert dataset.train_images.shape == (300, 3, 32, 32)
    assert dataset.test_images.shape == (100, 3, 32, 32)
    assert dataset.train_images.dtype == torch.uint8
    assert dataset.classes == list(data.CIFAR10_CLASSES)
    assert dataset.train_labels.bincount().tolist() == [30] * 10
    assert dataset.test_labels.bincount().tolist() == [10] * 10
    # real photographs, not blank: per-channel std of pixel values well above zero
    _, std = dataset.channel_stats()
    assert (std > 0.15).all()


def test_second_load_reads_the_cache_not_the_archive(cifar_slice, workdir, monkeypatch):
    first = load_cifar10(cifar_slice, download=False)
    assert list((workdir / "cache" / "initbench").glob("cifar10-*.pt"))

    def no_decoding(path):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data, "_read_archive", no_decoding)
    second = load_cifar10(cifar_slice, download=False)
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)


def test_folder_layout_gives_the_same_tensors_as_the_archive(cifar_slice, workdir):
    folder = workdir / "copy"
    with tarfile.open(cifar_slice) as archive:
        archive.extractall(folder, filter="data")
    from_folder = load_cifar10(folder, download=False)
    from_archive = load_cifar10(cifar_slice, download=False)
    assert torch.equal(from_folder.train_images, from_archive.train_images)
    assert torch.equal(from_folder.train_labels, from_archive.train_labels)


def _write_folder(root, sizes=((32, 32),), classes=("a", "b"), per_class=2, fmt="png"):
    for split in ("train", "test"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                height, width = sizes[i % len(sizes)]
                pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.{fmt}")
    return root


def test_empty_class_folder_is_named(workdir):
    root = _write_folder(workdir / "d")
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*empty holds no images"):
        load_cifar10(root, download=False)


def test_corrupt_image_is_named(workdir):
    root = _write_folder(workdir / "d")
    (root / "train" / "a" / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"cannot decode image .*broken\.png"):
        load_cifar10(root, download=False)


def test_image_of_another_size_is_named(workdir):
    root = _write_folder(workdir / "d", sizes=((32, 32), (64, 48)))
    with pytest.raises(DataError, match=r"is 48x64 pixels; CIFAR-10 images are 32x32"):
        load_cifar10(root, download=False)


def test_train_and_test_with_different_classes(workdir):
    root = _write_folder(workdir / "d")
    (root / "test" / "b").rename(root / "test" / "c")
    with pytest.raises(DataError, match=r"different classes \(train: a, b; test: a, c\)"):
        load_cifar10(root, download=False)


def test_missing_copy_without_download_says_how_to_provide_one(workdir):
    with pytest.raises(DataError) as error:
        load_cifar10(workdir / "nowhere", download=False)
    message = str(error.value)
    assert "nowhere" in message and "cifar-10-batches-py" in message
    assert "train/<class>" in message and "data=synthetic" in message


def test_failed_download_says_how_to_provide_a_copy(workdir, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match=r"download failed: .*name resolution.*data\.root="):
        load_cifar10(workdir / "data", download=True)


def test_a_file_that_is_not_an_archive(workdir):
    path = workdir / "images.zip"
    path.write_bytes(b"PK")
    with pytest.raises(DataError, match=r"is a file but not a \.tar\.gz archive"):
        load_cifar10(path, download=False)


def test_synthetic_is_deterministic_learnable_and_not_trivial():
    first = synthetic_dataset(2000, 500, 10)
    second = synthetic_dataset(2000, 500, 10)
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)
    assert first.train_labels.bincount().tolist() == [200] * 10

    def nearest(templates: torch.Tensor) -> float:
        distances = torch.cdist(first.test_images.float().flatten(1), templates.flatten(1))
        return (distances.argmin(1) == first.test_labels).float().mean().item()

    # learnable: averaging 200 images per class brings the class pattern out of the noise
    means = torch.stack([first.train_images[first.train_labels == c].float().mean(0)
                         for c in range(10)])  # fmt: skip
    assert nearest(means) > 0.9
    # not at a glance: one image per class, as a template, is little better than chance (0.1)
    ones = torch.stack([first.train_images[first.train_labels == c][0].float()
                        for c in range(10)])  # fmt: skip
    assert nearest(ones) < 0.4


def test_subset_keeps_classes_balanced_and_order():
    dataset = synthetic_dataset(1000, 100, 10)
    small = subset(dataset, 50, 20)
    assert small.train_labels.bincount(minlength=10).tolist() == [5] * 10
    assert small.test_labels.bincount(minlength=10).tolist() == [2] * 10
    # a subset is a prefix of each class's images, in the original order
    first_of_class0 = dataset.train_images[dataset.train_labels == 0][:5]
    assert torch.equal(small.train_images[small.train_labels == 0], first_of_class0)


def test_augment_flips_and_shifts_within_the_padding():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)
    flipped = augment(images, 0, generator)
    for original, out in zip(images, flipped):
        assert torch.equal(out, original) or torch.equal(out, original.flip(2))
    assert not torch.equal(flipped, images)  # some were flipped
    shifted = augment(images, 4, generator)
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    # zero padding shows up as zeros at the border of shifted images only
    zeros_per_image = (shifted == 0).flatten(1).sum(1)
    assert (zeros_per_image > 0).float().mean() > 0.5
    # every output row of a non-flipped, shifted image is a (cropped) row of the original
    for original, out in zip(images[:8], shifted[:8]):
        rows = {tuple(r.tolist()) for r in original[0]} | {tuple(r.tolist()) for r in
                                                             original[0].flip(1)}  # fmt: skip
        nonzero_rows = [r for r in out[0] if (r > 0).all()]
        assert all(tuple(r.tolist()) in rows for r in nonzero_rows)
