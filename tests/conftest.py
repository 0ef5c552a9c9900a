"""Shared fixtures: a small slice of the real CIFAR-10 archive, and a working directory."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARCHIVE = Path(
    os.environ.get(
        "INITBENCH_CIFAR_ARCHIVE", REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    )
)


def make_slice(target: Path, train_per_class: int, test_per_class: int) -> Path:
    """Copy the first images of each class of the JPEG archive into a small .tar.gz."""
    if not ARCHIVE.exists():
        pytest.skip(f"the CIFAR-10 JPEG archive is not at {ARCHIVE} (set INITBENCH_CIFAR_ARCHIVE)")
    wanted = {"train": train_per_class, "test": test_per_class}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(ARCHIVE, "r:gz") as source, tarfile.open(target, "w:gz") as sink:
        for member in source:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in wanted:
                continue
            key = (parts[-3], parts[-2])
            if taken.get(key, 0) >= wanted[parts[-3]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            data = source.extractfile(member).read()
            info = tarfile.TarInfo("/".join(parts[-3:]))
            info.size = len(data)
            sink.addfile(info, io.BytesIO(data))
    return target


@pytest.fixture(scope="session")
def cifar_slice(tmp_path_factory) -> Path:
    """A .tar.gz in the train/<class>/*.jpg layout: 30 train and 10 test images per class."""
    return make_slice(tmp_path_factory.mktemp("cifar") / "slice.tar.gz", 30, 10)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run from a fresh directory, with the decoded-image cache inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path
