"""What the student sees: a manifest pulled over HTTP, read into labeled and pseudo-labeled
streams, with the noisy training transform built by timm (the clean one is ``nst.transforms``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import Dataset, Sampler

from nst.client import Client
from trainer.config import Recipe


@dataclass
class Split:
    """Image URIs with targets: class indices (int64) or soft distributions (float32 [N, C])."""

    uris: list[str]
    targets: np.ndarray
    copies: np.ndarray

    def __len__(self) -> int:
        return len(self.uris)

    @property
    def soft(self) -> bool:
        return self.targets.ndim == 2


def fetch_manifest(client: Client, manifest_id: str) -> tuple[dict, Split, Split]:
    """The manifest's description and its labeled and pseudo-labeled entries."""
    manifest = client.manifest(manifest_id)
    num_classes = len(manifest["classes"])
    rows = {"labeled": [], "pseudo": []}
    for entry in client.manifest_entries(manifest_id):
        rows[entry["source"]].append(entry)
    labeled = _split(rows["labeled"], num_classes, soft=False)
    soft = bool(manifest["params"].get("soft", True))
    pseudo = _split(rows["pseudo"], num_classes, soft=soft)
    return manifest, labeled, pseudo


def _split(entries: list[dict], num_classes: int, *, soft: bool) -> Split:
    uris = [e["uri"] for e in entries]
    copies = np.array([e.get("copies", 1) for e in entries], dtype=np.int64)
    if soft:
        targets = np.zeros((len(entries), num_classes), dtype=np.float32)
        for i, e in enumerate(entries):
            target = e["target"]
            if isinstance(target, int):
                targets[i, target] = 1.0
            else:
                targets[i] = target
    else:
        targets = np.array([e["target"] for e in entries], dtype=np.int64)
    return Split(uris, targets, copies)


def fetch_eval_split(client: Client, dataset_id: int, classes: list[str]) -> Split:
    """A registered labeled dataset, its labels mapped onto the manifest's class order."""
    dataset = client.dataset(dataset_id)
    if sorted(dataset["classes"] or []) != sorted(classes):
        raise ValueError(
            f"eval dataset {dataset_id} has classes {dataset['classes']}, the manifest {classes}"
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
        with Image.open(self.split.uris[index]) as image:
            x = self.transform(image.convert(self.mode))
        return x, torch.as_tensor(self.split.targets[index])


class EndlessSampler(Sampler[int]):
    """Indices forever: each entry ``copies`` times per epoch, reshuffled every epoch from
    (seed, epoch), this rank's share only. Starting at ``start`` samples lets a resumed run
    continue the stream where it stopped."""

    def __init__(self, copies: np.ndarray, *, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        self.base = np.repeat(np.arange(len(copies)), copies)
        self.seed, self.rank, self.world, self.start = seed, rank, world, start

    def epoch_order(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.base)
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        per_epoch = len(self.base[self.rank :: self.world])
        epoch, offset = divmod(self.start, per_epoch)
        while True:
            yield from self.epoch_order(epoch)[offset:].tolist()
            epoch, offset = epoch + 1, 0
