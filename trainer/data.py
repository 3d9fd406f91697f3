"""What the student sees: a manifest pulled over HTTP as Parquet (this rank's share, checked
against the count and digest the service published), read into labeled and pseudo-labeled
streams with soft targets kept sparse, and the noisy training transform built by timm (the clean
one is ``nst.transforms``)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import Dataset, Sampler

from nst import manifest_file, storage, targets
from nst.client import Client
from nst.manifest_file import ManifestMismatch
from trainer.config import Recipe


@dataclass
class Sparse:
    """Soft targets as the manifest's Parquet carries them (``nst.targets``): ``[N, k]`` class
    indices and values and ``[N]`` rest masses, made dense one entry at a time."""

    indices: np.ndarray
    values: np.ndarray
    rest: np.ndarray
    num_classes: int

    def dense(self, index: int) -> np.ndarray:
        row = slice(index, index + 1)
        return targets.dense(self.indices[row], self.values[row], self.rest[row], self.num_classes)[0]


@dataclass
class Split:
    """Image URIs with targets: class indices (int64), or soft ones kept sparse."""

    uris: Uris | list[str]
    targets: np.ndarray
    copies: np.ndarray
    sparse: Sparse | None = None

    def __len__(self) -> int:
        return len(self.uris)

    @property
    def soft(self) -> bool:
        return self.sparse is not None

    def target(self, index: int) -> torch.Tensor:
        """Entry ``index``'s target: a class index, or a float32 distribution over the classes."""
        if self.sparse is not None:
            return torch.from_numpy(self.sparse.dense(index))
        return torch.as_tensor(self.targets[index])


def fetch_manifest(
    client: Client, manifest_id: str, *, part: int = 0, parts: int = 1
) -> tuple[dict, Split, Split]:
    """The manifest's description and the labeled and pseudo-labeled entries of share ``part``
    of ``parts`` (one per data-parallel rank), checked against what the service published.

    The Parquet arrives into a temporary file and is read a few megabytes of targets at a time,
    each record batch hashed and copied into arrays allocated once at their final size: memory
    holds the entries' arrays and one batch, not the body, the whole table and the copies a
    whole-table read made of them."""
    manifest = client.manifest(manifest_id)
    share = f"part {part} of {parts}"
    soft = bool(manifest["params"].get("soft", True))
    with tempfile.TemporaryFile() as body:
        headers = client.manifest_parquet(manifest_id, body, part=part, parts=parts)
        body.seek(0)
        parquet = pq.ParquetFile(body)
        footer = manifest_file.announced(manifest_id, share, headers, parquet)
        source = parquet.read(columns=["source"])["source"]
        is_labeled_count = pc.sum(pc.equal(source, "labeled")).as_py() or 0
        width = parquet.schema_arrow.field("target_indices").type.list_size
        labeled = _Gather(is_labeled_count, width, soft=False)
        pseudo = _Gather(len(source) - is_labeled_count, width, soft=soft)
        digest = targets.EntriesDigest()
        for batch in parquet.iter_batches(batch_size=manifest_file.batch_rows(parquet)):
            table = pa.Table.from_batches([batch])
            digest.update(manifest_file.digest_columns(table))
            is_labeled = pc.equal(table["source"], "labeled")
            labeled.add(table.filter(is_labeled))
            pseudo.add(table.filter(pc.invert(is_labeled)))
    manifest_file.check_digest(manifest_id, share, digest, footer)
    num_classes = len(manifest["classes"])
    return manifest, labeled.split(num_classes), pseudo.split(num_classes)


def check_entries(manifest: dict, received: int) -> None:
    """All ranks' shares together hold the manifest's entries."""
    expected = manifest["totals"]["entries"]
    if received != expected:
        raise ManifestMismatch(
            f"manifest {manifest['id']} has {expected} entries, the ranks received {received} in all"
        )


class Uris:
    """Image URIs as one Arrow string array (its bytes and offsets), indexed like a list: a
    Python str per entry cost about ten times the memory at millions of entries."""

    def __init__(self, array: pa.StringArray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index: int) -> str:
        return self.array[index].as_py()

    def __iter__(self) -> Iterator[str]:
        return iter(self.array.to_pylist())


class _Gather:
    """One split's columns, copied record batch by record batch into arrays of its final size."""

    def __init__(self, rows: int, width: int, *, soft: bool) -> None:
        self.soft, self.filled = soft, 0
        self.uris: list[pa.StringArray] = []
        self.copies = np.empty(rows, dtype=np.int64)
        self.classes = np.empty(rows, dtype=np.int64)
        if soft:
            self.indices = np.empty((rows, width), dtype=np.int32)
            self.values = np.empty((rows, width), dtype=np.float32)
            self.rest = np.empty(rows, dtype=np.float32)

    def add(self, table: pa.Table) -> None:
        rows = slice(self.filled, self.filled + table.num_rows)
        self.uris.append(table["uri"].combine_chunks())
        self.copies[rows] = table["copies"].to_numpy()
        self.classes[rows] = table["target_class"].to_numpy()
        if self.soft:
            self.indices[rows] = manifest_file.column(table, "target_indices")
            self.values[rows] = manifest_file.column(table, "target_values")
            self.rest[rows] = manifest_file.column(table, "target_rest")
        self.filled = rows.stop

    def split(self, num_classes: int) -> Split:
        uris = Uris(pa.concat_arrays(self.uris) if self.uris else pa.array([], pa.string()))
        if not self.soft:
            return Split(uris, self.classes, self.copies)
        sparse = Sparse(self.indices, self.values, self.rest, num_classes)
        return Split(uris, self.classes, self.copies, sparse)


class DatasetMismatch(ValueError):
    """A dataset to score a model on does not hold the model's classes."""


def fetch_eval_split(client: Client, dataset_id: int, classes: list[str]) -> Split:
    """A registered labeled dataset, its labels mapped onto the manifest's class order."""
    dataset = client.dataset(dataset_id)
    if sorted(dataset["classes"] or []) != sorted(classes):
        raise DatasetMismatch(
            f"dataset {dataset_id} has classes {dataset['classes']}, the model {classes}: score it on a "
            "labeled dataset of its classes"
        )
    to_manifest = {i: classes.index(name) for i, name in enumerate(dataset["classes"])}
    items = list(client.items(dataset_id))
    targets = np.array([to_manifest[item["label"]] for item in items], dtype=np.int64)
    return Split([item["uri"] for item in items], targets, np.ones(len(items), dtype=np.int64))


def train_transform(recipe: Recipe, *, noisy: bool):
    """Crop and flip always; RandAugment only when the student is noised."""
    return create_transform(
        input_size=(recipe.channels, recipe.image_size, recipe.image_size),
        is_training=True,
        scale=recipe.crop_scale,
        hflip=recipe.hflip,
        auto_augment=recipe.randaugment_spec if noisy else None,
        color_jitter=None,  # timm adds colour jitter when there is no RandAugment; not here
        interpolation=recipe.interpolation,
        mean=tuple(recipe.mean),
        std=tuple(recipe.std),
    )


class ImageTargets(Dataset):
    def __init__(self, split: Split, transform, mode: str):
        self.split, self.transform, self.mode = split, transform, mode

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        # Local files, or objects read through this DataLoader process's own file system.
        with Image.open(storage.openable(self.split.uris[index])) as image:
            x = self.transform(image.convert(self.mode))
        return x, self.split.target(index)


class EndlessSampler(Sampler[int]):
    """Indices forever: each entry ``copies`` times per epoch, reshuffled every epoch from
    (seed, epoch). A rank samples its own share of the manifest (``fetch_manifest``'s part).
    Starting at ``start`` samples lets a resumed run continue the stream where it stopped."""

    def __init__(self, copies: np.ndarray, *, seed: int, start: int = 0):
        self.base = np.repeat(np.arange(len(copies)), copies)
        self.seed, self.start = seed, start

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.base)

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, len(self.base))
        while True:
            yield from self.epoch_order(epoch)[offset:].tolist()
            epoch, offset = epoch + 1, 0
