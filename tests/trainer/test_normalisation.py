"""A student's normalisation when the recipe names none: the checkpoint it starts from, else its
data's pixel statistics (pooled over datasets), else timm's ImageNet defaults."""

import numpy as np
import pytest
import timm

from nst.checkpoint import default_metadata, save_teacher
from trainer.config import Recipe
from trainer.normalisation import resolve


class _Datasets:
    def __init__(self, *datasets: dict):
        self.by_id = {d["id"]: d for d in datasets}

    def dataset(self, dataset_id: int) -> dict:
        return self.by_id[dataset_id]


def _dataset(dataset_id: int, count: int, mean: float, std: float) -> dict:
    stats = {"L": {"mean": [mean], "std": [std]}, "RGB": {"mean": [mean] * 3, "std": [std] * 3}, "sample": 9}
    return {"id": dataset_id, "item_count": count, "pixel_stats": stats}


def _manifest(labeled: list[int], unlabeled: list[int] = ()) -> dict:
    return {"provenance": {"labeled_dataset_ids": labeled, "unlabeled_dataset_ids": list(unlabeled)}}


def test_the_recipe_s_own_values_win():
    recipe = Recipe(mean=[0.1], std=[0.2])
    assert resolve(recipe, None, _manifest([1])) == (recipe, "the recipe")


def test_datasets_are_pooled_as_if_they_were_one():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.2, 0.1, 3000), rng.normal(0.6, 0.05, 1000)
    client = _Datasets(_dataset(1, len(a), a.mean(), a.std()), _dataset(2, len(b), b.mean(), b.std()))
    recipe, source = resolve(Recipe(channels=1), client, _manifest([1, 2]))
    pooled = np.concatenate([a, b])
    assert recipe.mean[0] == pytest.approx(pooled.mean(), abs=1e-4)
    assert recipe.std[0] == pytest.approx(pooled.std(), abs=1e-4)
    assert "dataset(s) 1, 2" in source
    rgb, _ = resolve(Recipe(channels=3), client, _manifest([1]))
    assert len(rgb.mean) == len(rgb.std) == 3


def test_pseudo_only_manifests_use_the_unlabeled_data_and_unmeasured_ones_imagenet():
    client = _Datasets(_dataset(5, 10, 0.4, 0.3), {"id": 6, "item_count": 3, "pixel_stats": None})
    assert resolve(Recipe(channels=1), client, _manifest([], [5]))[0].mean == [0.4]
    recipe, source = resolve(Recipe(channels=3), client, _manifest([6]))
    assert recipe.mean == list(timm.data.IMAGENET_DEFAULT_MEAN) and "ImageNet" in source


def test_a_pretrained_checkpoint_brings_its_own(tmp_path):
    model = timm.create_model("resnet10t", num_classes=2, in_chans=1)
    metadata = default_metadata("resnet10t", ["a", "b"], 1, image_size=28) | {"mean": [0.7], "std": [0.2]}
    path = save_teacher(model.state_dict(), tmp_path / "t.safetensors", metadata)
    client = _Datasets(_dataset(1, 10, 0.4, 0.3))
    recipe, source = resolve(Recipe(channels=1, pretrained_path=str(path)), client, _manifest([1]))
    assert (recipe.mean, recipe.std) == ([0.7], [0.2]) and str(path) in source
    # a checkpoint for other channels says nothing about these images
    assert resolve(Recipe(channels=3, pretrained_path=str(path)), client, _manifest([1]))[0].mean == [0.4] * 3
