"""Real images for the demo and the tests: Fashion-MNIST (Debian's ``dataset-fashion-mnist``)
written out as PNG files, labeled ones in ImageFolder layout, unlabeled ones in a flat folder
with their hidden truth in a sidecar CSV (so pseudo-label accuracy can be measured)."""

from __future__ import annotations

import csv
import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]
TRUTH_FILE = "truth.csv"


def load(split: str, source: Path = DEFAULT_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) for split 'train' or 't10k'."""
    with gzip.open(source / f"{split}-images-idx3-ubyte.gz") as handle:
        _, count, rows, cols = struct.unpack(">IIII", handle.read(16))
        images = np.frombuffer(handle.read(), dtype=np.uint8).reshape(count, rows, cols)
    with gzip.open(source / f"{split}-labels-idx1-ubyte.gz") as handle:
        handle.read(8)
        labels = np.frombuffer(handle.read(), dtype=np.uint8).astype(np.int64)
    return images, labels


def write_image_folder(out: Path, images: np.ndarray, labels: np.ndarray, indices) -> None:
    for index in indices:
        folder = out / CLASSES[labels[index]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(folder / f"{index:05d}.png")


def write_unlabeled(out: Path, images: np.ndarray, labels: np.ndarray, indices) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out.parent / f"{out.name}-{TRUTH_FILE}").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for index in indices:
            path = out / f"{index:05d}.png"
            Image.fromarray(images[index]).save(path)
            writer.writerow([str(path), CLASSES[labels[index]]])


def split_indices(
    labels: np.ndarray, *, per_class: int, unlabeled: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced labeled subset and a random unlabeled pool from the rest."""
    rng = np.random.default_rng(seed)
    labeled = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(len(CLASSES))]
    )
    rest = np.setdiff1d(np.arange(len(labels)), labeled)
    pool = rng.choice(rest, min(unlabeled, len(rest)), replace=False)
    return np.sort(labeled), np.sort(pool)


def prepare_all_labeled(out: Path, *, source: Path = DEFAULT_DIR) -> Path:
    """Every training image in ImageFolder layout under ``out/all-labeled`` (skipped when there):
    the accuracy study's oracle, which learns from all 60,000 labels."""
    return _prepared(out / "all-labeled", "train", source)


def prepare_test_subset(out: Path, count: int, *, source: Path = DEFAULT_DIR) -> Path:
    """The first ``count`` test images in ImageFolder layout under ``out/test-first-<count>``
    (skipped when there): the accuracy study's robustness set."""
    return _prepared(out / f"test-first-{count}", "t10k", source, count)


def _prepared(path: Path, split: str, source: Path, count: int | None = None) -> Path:
    """The split's first ``count`` images (all by default) at ``path``, unless already there."""
    if not path.exists():
        images, labels = load(split, source)
        partial = path.with_name(path.name + ".partial")
        write_image_folder(partial, images, labels, range(len(labels))[:count])
        partial.rename(path)  # whole or absent: an interrupted write is redone, not reused
    return path


def prepare(
    out: Path,
    *,
    per_class: int = 100,
    unlabeled: int = 20000,
    test: int = 10000,
    seed: int = 0,
    source: Path = DEFAULT_DIR,
) -> dict[str, Path]:
    """Write labeled/, unlabeled/ and test/ under ``out`` (skipped when already there)."""
    paths = {"labeled": out / "labeled", "unlabeled": out / "unlabeled", "test": out / "test"}
    if all(p.exists() for p in paths.values()):
        return paths
    images, labels = load("train", source)
    labeled, pool = split_indices(labels, per_class=per_class, unlabeled=unlabeled, seed=seed)
    write_image_folder(paths["labeled"], images, labels, labeled)
    write_unlabeled(paths["unlabeled"], images, labels, pool)
    test_images, test_labels = load("t10k", source)
    write_image_folder(paths["test"], test_images, test_labels, range(min(test, len(test_labels))))
    return paths
