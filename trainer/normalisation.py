"""A student's input normalisation when its recipe names none: the checkpoint it starts from,
else the pixel statistics the service measured on the manifest's labeled images at
registration (its pseudo-labeled ones when it has none), else timm's ImageNet defaults."""

from __future__ import annotations

import dataclasses

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from nst.checkpoint import read_metadata
from nst.client import Client
from trainer.config import Recipe


def resolve(recipe: Recipe, client: Client, manifest: dict) -> tuple[Recipe, str]:
    """The recipe with ``mean`` and ``std`` filled in, and where they came from."""
    if recipe.mean is not None and recipe.std is not None:
        return recipe, "the recipe"
    found = _from_checkpoint(recipe) or _from_datasets(recipe, client, manifest) or _imagenet(recipe)
    mean, std, source = found
    return dataclasses.replace(recipe, mean=recipe.mean or mean, std=recipe.std or std), source


def _from_checkpoint(recipe: Recipe):
    if not recipe.pretrained_path:
        return None
    metadata = read_metadata(recipe.pretrained_path)
    if metadata is None or metadata.channels != recipe.channels:
        return None
    return metadata.mean, metadata.std, f"the checkpoint {recipe.pretrained_path}"


def _from_datasets(recipe: Recipe, client: Client, manifest: dict):
    provenance = manifest["provenance"]
    ids = provenance["labeled_dataset_ids"] or provenance["unlabeled_dataset_ids"]
    measured = [client.dataset(dataset_id) for dataset_id in ids]
    measured = [d for d in measured if d.get("pixel_stats")]
    if not measured:
        return None
    # Weighted by images, as if the datasets were one.
    mode = recipe.mode
    weights = [d["item_count"] for d in measured]
    total = sum(weights)
    mean = [
        sum(w * d["pixel_stats"][mode]["mean"][c] for w, d in zip(weights, measured, strict=True)) / total
        for c in range(recipe.channels)
    ]
    # The pooled std: each dataset's variance plus its mean's distance from the pooled mean.
    std = [
        (
            sum(
                w
                * (d["pixel_stats"][mode]["std"][c] ** 2 + (d["pixel_stats"][mode]["mean"][c] - mean[c]) ** 2)
                for w, d in zip(weights, measured, strict=True)
            )
            / total
        )
        ** 0.5
        for c in range(recipe.channels)
    ]
    names = ", ".join(str(d["id"]) for d in measured)
    return (
        [round(m, 4) for m in mean],
        [round(s, 4) for s in std],
        f"the pixel statistics of dataset(s) {names}",
    )


def _imagenet(recipe: Recipe):
    if recipe.channels == 3:
        return list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD), "timm's ImageNet defaults"
    gray = sum(IMAGENET_DEFAULT_MEAN) / 3, sum(IMAGENET_DEFAULT_STD) / 3
    return [gray[0]], [gray[1]], "timm's ImageNet defaults, averaged to one channel"
