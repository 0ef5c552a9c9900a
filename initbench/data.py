"""Data sources for CIFAR-10 and a synthetic stand-in, loaded once as uint8 tensors.

Every source ends as the same thing, a :class:`Dataset` of ``uint8`` images shaped
``(N, 3, 32, 32)`` and ``int64`` labels, so the training loop can hold the whole split on the
device and slice, augment and normalize batches there (:func:`augment`, :func:`normalize`).

Sources for ``data=cifar10``, tried in this order for ``data.root``:

1. a ``.tar.gz`` archive or a folder in the ``train/<class>/*``, ``test/<class>/*`` layout
   (JPEG or PNG, 32x32 RGB); decoded once, then read from a cache of tensors;
2. torchvision's own copy (``<root>/cifar-10-batches-py``);
3. torchvision's download into ``root`` when ``data.download`` is true and the network allows.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy
import torch

from initbench.record import atomic_write_bytes

log = logging.getLogger(__name__)

IMAGE_SHAPE = (3, 32, 32)
# synthetic images: amplitude of the class pattern and of the noise (pixel values, around a
# grey of 128), and the largest shift of the pattern in pixels
SYNTHETIC_CONTRAST, SYNTHETIC_NOISE, SYNTHETIC_SHIFT = 60.0, 50.0, 4
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CACHE_VERSION = 1


class DataError(ValueError):
    """The dataset cannot be found or read; the message says what to provide instead."""


@dataclass
class Dataset:
    train_images: torch.Tensor  # (N, 3, 32, 32) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    source: str  # where it came from, for the record

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device) -> Dataset:
        move = lambda tensor: tensor.to(device, non_blocking=True)  # noqa: E731
        return Dataset(
            move(self.train_images), move(self.train_labels),
            move(self.test_images), move(self.test_labels),
            self.classes, self.source,
        )  # fmt: skip

    def channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and (unbiased) std of the training images, on the 0..1 scale.

        Computed from a histogram of the 256 pixel levels per channel, exactly, in float64:
        a float copy of the whole split would take 600 MB for CIFAR-10 (twice that with the
        transpose), more than the rest of a CPU run together.
        """
        channels = self.train_images.shape[1]
        counts = torch.stack([
            torch.bincount(self.train_images[:, c].reshape(-1), minlength=256)
            for c in range(channels)
        ]).double()  # fmt: skip
        levels = torch.arange(256, dtype=torch.float64, device=counts.device) / 255
        total = counts.sum(dim=1)
        mean = counts @ levels / total
        variance = (counts @ levels.square() - total * mean.square()) / (total - 1)
        return mean.float(), variance.clamp_min(0).sqrt().float()


# ----------------------------------------------------------------------------- batch transforms


def normalize(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    channels_last: bool = False,
    *,
    affine: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, per-channel standardized: (x / 255 - mean) / std, as one
    multiply and one add per element; laid out channels-last if asked. ``affine`` is
    ``normalization_affine(mean, std)`` computed once, for a caller that normalizes every step.

    The arithmetic is done in the plain layout and the result converted after: a per-channel
    multiply over a channels-last tensor has 3 elements in its innermost loop, and on the CPU
    that costs 5x more than the conversion (measured at batch 64: 45 us to normalize, 50 us to
    convert, 240 us to normalize in channels-last)."""
    scale, shift = affine if affine is not None else normalization_affine(mean, std)
    images = images.float().mul_(scale).add_(shift)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def normalization_affine(mean: torch.Tensor, std: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(scale, shift), each (1, 3, 1, 1): x * scale + shift = (x / 255 - mean) / std."""
    return (1 / (255 * std)).view(1, 3, 1, 1), (-mean / std).view(1, 3, 1, 1)


def augment(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch at once.

    Works on any dtype and device; each image gets its own offset and flip, drawn from
    ``generator`` (which must live on the images' device).
    """
    batch, channels, height, width = images.shape
    device = images.device
    flip = torch.rand(batch, device=device, generator=generator) < 0.5
    if padding == 0:
        return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)
    shift = torch.randint(0, 2 * padding + 1, (2, batch), device=device, generator=generator)
    padded = torch.nn.functional.pad(images, (padding,) * 4)  # (B, C, H + 2p, W + 2p)
    # Crop and flip in one gather, rather than flipping every image, then gathering rows, then
    # columns: one pass over the batch instead of four. Which pixels of the padded image an
    # output image reads depends only on its (flip, row offset, column offset): one row of a
    # table made once, picked per image.
    offsets = 2 * padding + 1
    choice = (flip.long() * offsets + shift[0]) * offsets + shift[1]
    table = _crop_table(padding, height, width, str(device))
    index = table.index_select(0, choice).view(batch, 1, height * width)
    return padded.flatten(2).gather(2, index.expand(-1, channels, -1)).view(images.shape)


@functools.lru_cache(maxsize=8)
def _crop_table(padding: int, height: int, width: int, device: str) -> torch.Tensor:
    """(2 * (2p + 1)^2, H * W) flat indices into a padded (H + 2p, W + 2p) image; row
    (flip * (2p + 1) + dy) * (2p + 1) + dx reads the crop at (dy, dx), mirrored if flip.

    Flipping the padded image and cropping at column dx reads padded columns
    (W + 2p - 1 - dx) - j for j = 0..W-1: the same draws give the same images as flipping
    first, then cropping."""
    offsets = torch.arange(2 * padding + 1, device=device)
    flip, dy, dx = torch.meshgrid(torch.arange(2, device=device), offsets, offsets,
                                  indexing="ij")  # fmt: skip
    flip, dy, dx = flip.reshape(-1, 1), dy.reshape(-1, 1), dx.reshape(-1, 1)
    column = torch.arange(width, device=device)
    cols = torch.where(flip == 1, (width - 1 + 2 * padding - dx) - column, dx + column)
    rows = dy + torch.arange(height, device=device)
    flat = rows.unsqueeze(2) * (width + 2 * padding) + cols.unsqueeze(1)  # (N, H, W)
    return flat.reshape(len(flat), height * width)


# ----------------------------------------------------------------------------- sources


def load_dataset(data_cfg, base_dir: Path | None = None) -> Dataset:
    """Load the configured dataset onto the CPU as uint8 tensors, subsets applied.

    ``base_dir`` is the directory relative paths refer to (the one the command was run from).
    """
    if data_cfg.name == "synthetic":
        dataset = synthetic_dataset(data_cfg.num_train, data_cfg.num_test, data_cfg.num_classes)
    elif data_cfg.name == "cifar10":
        base_dir = Path(base_dir or os.getcwd())
        root = _resolve(data_cfg.root, base_dir)
        cache_dir = _resolve(data_cfg.cache_dir, base_dir) if data_cfg.cache_dir else None
        dataset = load_cifar10(root, download=data_cfg.download, cache_dir=cache_dir)
    else:
        raise DataError(f"data.name={data_cfg.name!r} is unknown; choose cifar10 or synthetic.")
    return subset(dataset, data_cfg.train_subset, data_cfg.test_subset)


def _resolve(path: str | os.PathLike, base_dir: Path) -> Path:
    path = Path(os.path.expanduser(str(path)))
    return path if path.is_absolute() else base_dir / path


def synthetic_dataset(num_train: int, num_test: int, num_classes: int = 10) -> Dataset:
    """Images whose class can be learned from the pixels, but not at a glance: a smooth class
    pattern, faint under noise and shifted by up to 4 pixels (wrapping around) per image.

    Hard enough that training curves say something: with the defaults (SGD, batch 64), 3 epochs
    on 2,048 images take the CNN from 27% to about 60% test accuracy and the MLP, which has no
    translation invariance, to about 30% (chance: 10%). The same arguments always give the same
    images (a fixed generator), so two runs with different seeds differ only in what the seed
    controls.
    """
    generator = torch.Generator().manual_seed(20261204)
    coarse = torch.rand(num_classes, 3, 8, 8, generator=generator) - 0.5
    patterns = torch.nn.functional.interpolate(coarse, size=IMAGE_SHAPE[1:], mode="bilinear")
    patterns *= SYNTHETIC_CONTRAST
    height, width = IMAGE_SHAPE[1:]

    def make(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(count) % num_classes
        labels = labels[torch.randperm(count, generator=generator)]
        images = torch.empty(count, *IMAGE_SHAPE, dtype=torch.uint8)
        for start in range(0, count, 4096):  # a float copy of 4,096 images at a time
            chunk = labels[start : start + 4096]
            n = len(chunk)
            shift = torch.randint(-SYNTHETIC_SHIFT, SYNTHETIC_SHIFT + 1, (2, n, 1),
                                  generator=generator)  # fmt: skip
            rows = (torch.arange(height) - shift[0]) % height  # (n, H)
            cols = (torch.arange(width) - shift[1]) % width  # (n, W)
            moved = patterns[chunk.view(-1, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1),
                             rows.view(n, 1, height, 1), cols.view(n, 1, 1, width)]  # fmt: skip
            noise = torch.randn(n, *IMAGE_SHAPE, generator=generator) * SYNTHETIC_NOISE
            images[start : start + n] = (moved + noise + 128).clamp_(0, 255).round_()
        return images, labels

    train_images, train_labels = make(num_train)
    test_images, test_labels = make(num_test)
    classes = [f"class{i}" for i in range(num_classes)]
    return Dataset(train_images, train_labels, test_images, test_labels, classes, "synthetic")


def subset(dataset: Dataset, train: int | None, test: int | None) -> Dataset:
    """The first ``train`` / ``test`` images, taken class by class in turn so classes stay
    balanced."""

    def take(images, labels, count):
        if count is None or count >= len(labels):
            return images, labels
        order = torch.argsort(labels, stable=True)
        rank = torch.empty_like(order)
        sorted_labels = labels[order]
        # position of each image within its class, then interleave classes by that position
        starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
        rank[order] = torch.arange(len(labels)) - starts
        keys = rank * (int(labels.max()) + 1) + labels
        chosen = torch.argsort(keys, stable=True)[:count].sort().values
        return images[chosen], labels[chosen]

    train_images, train_labels = take(dataset.train_images, dataset.train_labels, train)
    test_images, test_labels = take(dataset.test_images, dataset.test_labels, test)
    return Dataset(
        train_images, train_labels, test_images, test_labels, dataset.classes, dataset.source
    )


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "initbench"


def load_cifar10(root: Path, *, download: bool = True, cache_dir: Path | None = None) -> Dataset:
    root = Path(root)
    kind = source_kind(root, download)
    if kind == "archive":
        return _cached(root, cache_dir, lambda: _read_archive(root))
    if kind == "folder":
        return _cached(root, cache_dir, lambda: _read_folder(root))
    return _torchvision_cifar10(root, download)


def source_kind(root: Path, download: bool) -> str:
    """Which source ``root`` is ("archive", "folder", "torchvision"); :class:`DataError` when it
    is none of them. Looks at names only, never inside a file."""
    if root.is_file():
        if not root.name.endswith((".tar.gz", ".tgz", ".tar")):
            raise DataError(
                f"data.root={root} is a file but not a .tar.gz archive. Point data.root at a "
                "folder or .tar.gz with train/<class>/*.jpg and test/<class>/*.jpg, or at "
                "torchvision's CIFAR-10 folder (the one holding cifar-10-batches-py)."
            )
        return "archive"
    splits = [split for split in ("train", "test") if (root / split).is_dir()]
    if len(splits) == 2:
        return "folder"
    if len(splits) == 1:
        (other,) = {"train", "test"} - set(splits)
        raise DataError(
            f"data.root={root} has a {splits[0]}/ folder but no {other}/ folder; a local copy "
            "needs both, as train/<class>/*.jpg and test/<class>/*.jpg."
        )
    if not root.exists() and root.name.endswith((".tar.gz", ".tgz", ".tar")):
        # a path to an archive that is not there is a typo, not a folder to download into
        raise DataError(_missing_message(root, "no such archive"))
    if (root / "cifar-10-batches-py").is_dir() or download:
        return "torchvision"
    reason = "data.download=false" if root.exists() else "no such file or folder"
    raise DataError(_missing_message(root, reason))


def check_source(data_cfg, base_dir: Path | None = None) -> None:
    """Check ``data.root`` cheaply, before a run starts: that it exists and has a layout this
    module reads (for a folder, also that no class folder is empty and both splits hold the
    same classes). Images are not opened: a corrupt or odd-sized image fails the run."""
    if data_cfg.name != "cifar10":
        return
    root = _resolve(data_cfg.root, Path(base_dir or os.getcwd()))
    if source_kind(root, data_cfg.download) == "folder":
        _folder_classes(root)


def _missing_message(root: Path, reason: str) -> str:
    return (
        f"No CIFAR-10 copy at data.root={root} ({reason}). Provide one of: torchvision's folder "
        "(data.root=DIR holding cifar-10-batches-py, or any DIR with network access: it is "
        "downloaded there); a folder or .tar.gz in the train/<class>/*.jpg, test/<class>/*.jpg "
        "layout (data.root=/path/to/cifar10-jpeg.tar.gz); or use data=synthetic for a smoke run."
    )


def _torchvision_cifar10(root: Path, download: bool) -> Dataset:
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(str(root), train=True, download=download)
        test = CIFAR10(str(root), train=False, download=download)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        raise DataError(_missing_message(root, f"download failed: {error}")) from error

    def tensors(split):
        images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(split.targets, dtype=torch.int64)

    return Dataset(*tensors(train), *tensors(test), list(train.classes), f"torchvision:{root}")


# ----------------------------------------------------------------------------- image folders


def _cached(source: Path, cache_dir: Path | None, read) -> Dataset:
    """Decode ``source`` once; later runs load the tensors from the cache (about 180 MB)."""
    stat = source.stat()
    fingerprint = f"{CACHE_VERSION}:{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if source.is_dir():
        for split in ("train", "test"):
            split_stat = (source / split).stat()
            fingerprint += f":{split_stat.st_mtime_ns}"
            for class_dir in sorted((source / split).iterdir()):
                fingerprint += f":{class_dir.name}:{class_dir.stat().st_mtime_ns}"
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_file = cache_dir / f"cifar10-{key}.pt"
    if cache_file.exists():
        try:
            payload = torch.load(cache_file, weights_only=True)
            log.info("data: loaded decoded images from cache %s", cache_file)
            return Dataset(**payload, source=str(source))
        except Exception as error:  # a damaged cache is rebuilt, never trusted
            log.warning("data: cache %s unreadable (%s); decoding again", cache_file, error)
    log.info("data: decoding %s (once; cached afterwards in %s)", source, cache_dir)
    dataset = read()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        payload = {
            "train_images": dataset.train_images, "train_labels": dataset.train_labels,
            "test_images": dataset.test_images, "test_labels": dataset.test_labels,
            "classes": dataset.classes,
        }  # fmt: skip
        torch.save(payload, buffer)
        atomic_write_bytes(cache_file, buffer.getvalue())
    except OSError as error:
        log.warning("data: could not write the cache in %s (%s); next run decodes again",
                    cache_dir, error)  # fmt: skip
    return dataset


def _read_archive(path: Path) -> Dataset:
    files: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                parts = Path(member.name).parts
                # accept an optional top-level folder: [top/]split/class/file
                for offset in (0, 1):
                    if len(parts) == offset + 3 and parts[offset] in files:
                        split, class_name, file_name = parts[offset:]
                        break
                else:
                    continue
                if not file_name.lower().endswith(IMAGE_SUFFIXES) or file_name.startswith("."):
                    continue
                data = archive.extractfile(member).read()
                files[split].append((class_name, member.name, data))
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"data.root={path} could not be read as a tar archive: {error}") from error
    return _decode_splits(files, path)


def _folder_classes(root: Path) -> list[str]:
    """The class folders of a train/<class>/*, test/<class>/* copy, checked without decoding."""
    classes = {}
    for split in ("train", "test"):
        class_dirs = [path for path in sorted((root / split).iterdir())
                      if path.is_dir() and not path.name.startswith(".")]  # fmt: skip
        for class_dir in class_dirs:
            if not any(file.suffix.lower() in IMAGE_SUFFIXES for file in class_dir.iterdir()):
                raise DataError(
                    f"data.root={root}: the class folder {class_dir} holds no images "
                    f"({', '.join(IMAGE_SUFFIXES)}); every class needs at least one."
                )
        classes[split] = [path.name for path in class_dirs]
        if not class_dirs:
            raise DataError(
                f"data.root={root}: {split}/ holds no class folders. Expected the layout "
                "train/<class>/*.jpg, test/<class>/*.jpg, e.g. train/airplane/0001.jpg."
            )
    _check_same_classes(root, classes["train"], classes["test"])
    return classes["train"]


def _check_same_classes(source: Path, train: list[str], test: list[str]) -> None:
    if train != test:
        raise DataError(
            f"data.root={source}: train and test hold different classes "
            f"(train: {', '.join(train)}; test: {', '.join(test)})."
        )


def _read_folder(root: Path) -> Dataset:
    files: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    for class_name in _folder_classes(root):
        for split in files:
            for file in sorted((root / split / class_name).iterdir()):
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    files[split].append((class_name, str(file), file.read_bytes()))
    return _decode_splits(files, root)


def _decode_splits(files: dict[str, list[tuple[str, str, bytes]]], source: Path) -> Dataset:
    classes = sorted({class_name for class_name, _, _ in files["train"]})
    test_classes = sorted({class_name for class_name, _, _ in files["test"]})
    if not classes or not files["test"]:
        raise DataError(
            f"data.root={source} has no images in the train/<class>/*, test/<class>/* layout "
            "(found train: {0}, test: {1} images). Expected e.g. train/airplane/0001.jpg.".format(
                len(files["train"]), len(files["test"])
            )
        )
    _check_same_classes(source, classes, test_classes)
    index = {name: i for i, name in enumerate(classes)}
    splits = []
    for split in ("train", "test"):
        entries = sorted(files[split], key=lambda entry: (index[entry[0]], entry[1]))
        images = torch.empty(len(entries), *IMAGE_SHAPE, dtype=torch.uint8)
        for i, (_, name, data) in enumerate(entries):
            images[i] = _decode(data, name)
        labels = torch.tensor([index[class_name] for class_name, _, _ in entries])
        splits += [images, labels]
    log.info("data: %d train and %d test images, %d classes", len(splits[1]), len(splits[3]),
             len(classes))  # fmt: skip
    return Dataset(*splits, classes=classes, source=str(source))


def _decode(data: bytes, name: str) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = numpy.array(image.convert("RGB"))
    except UnidentifiedImageError:
        raise DataError(f"cannot decode image {name}: not a readable image file. Replace or "
                        "remove it.") from None  # fmt: skip
    except (OSError, ValueError) as error:
        raise DataError(f"cannot decode image {name}: {error}. Replace or remove it.") from None
    if pixels.shape != (32, 32, 3):
        raise DataError(
            f"image {name} is {pixels.shape[1]}x{pixels.shape[0]} pixels; CIFAR-10 images are "
            "32x32. Resize the copy or point data.root at a CIFAR-10 copy."
        )
    return torch.from_numpy(pixels).permute(2, 0, 1)
