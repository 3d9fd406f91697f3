"""The config's parts: saved whole and read back, and one flat name per field for the CLI."""

import dataclasses
import json

import pytest

from trainer.config import Lineage, Recipe, RecipeError, Runtime, ServiceLink, TrainConfig


def _config() -> TrainConfig:
    return TrainConfig(
        ServiceLink(manifest_id="m", api_token="secret", eval_dataset_id=3),
        Recipe(architecture="resnet10t", mean=[0.5], std=[0.25], steps=7),
        Runtime(out_dir="runs/x", workers=0),
        Lineage(parent_id="t0", generation=2, name="gen2"),
    )


def test_a_saved_config_reads_back_as_it_was_less_the_token():
    cfg = _config()
    saved = json.loads(json.dumps(cfg.to_dict()))
    assert "api_token" not in saved["service"]
    assert TrainConfig.from_dict(saved) == dataclasses.replace(
        cfg, service=dataclasses.replace(cfg.service, api_token=None)
    )


def test_a_flat_config_from_an_older_checkpoint_reads_into_its_parts():
    flat = {"manifest_id": "m", "steps": 7, "workers": 0, "generation": 2, "retired_setting": 1}
    cfg = TrainConfig.from_dict(flat)
    assert (cfg.service.manifest_id, cfg.recipe.steps, cfg.runtime.workers) == ("m", 7, 0)
    assert cfg.lineage.generation == 2


def test_field_names_are_unique_across_the_parts():
    names = [f.name for part in TrainConfig.parts().values() for f in dataclasses.fields(part)]
    assert len(names) == len(set(names)) == len(TrainConfig.field_names())


def test_from_flat_names_an_unknown_setting():
    with pytest.raises(TypeError, match="stpes"):
        TrainConfig.from_flat({"manifest_id": "m", "stpes": 3})


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"batch_size": 0}, "batch_size: must be 1 or more, not 0"),
        ({"architecture": "resnet_18"}, "architecture: must be a timm model name, not 'resnet_18'"),
        ({"dropout": 1.5}, "dropout: must be 0 or more and below 1, not 1.5"),
        ({"drop_path": -0.1}, "drop_path: must be 0 or more and below 1"),
        ({"image_size": 0}, "image_size: must be from 8 to 4096"),
        ({"crop_scale_min": 2.0}, "crop_scale_min: must be above 0 and at most 1, not 2.0"),
        ({"crop_scale_min": 0.0}, "crop_scale_min: must be above 0"),
        ({"pseudo_ratio": -1.0}, "pseudo_ratio: must be 0 or more (0: the labeled entries only), not -1.0"),
        ({"steps": 0}, "steps: must be 1 or more"),
        ({"lr": 0.0}, "lr: must be positive"),
        ({"seed": -1}, "seed: must be from 0 to"),
        ({"optimizer": "adamx"}, "optimizer: must be one of timm's optimizers"),
        ({"channels": 2}, "channels: must be 1 or 3"),
        ({"mean": [0.5, 0.5]}, "mean: must be one value per channel (1), not [0.5, 0.5]"),
        ({"pretrained_path": "/nowhere/student.safetensors"}, "pretrained_path: must be an existing"),
        ({"workers": -1}, "workers: must be 0 (decode in the main process) or more, not -1"),
        ({"checkpoint_every": -5}, "checkpoint_every: must be 0"),
        ({"generation": -1}, "generation: must be 0 or more"),
    ],
)
def test_a_setting_that_would_fail_once_training_runs_is_refused_naming_its_field(setting, named):
    cfg = TrainConfig.from_flat({"manifest_id": "m", **setting})
    with pytest.raises(RecipeError) as refused:
        cfg.check()
    assert named in str(refused.value) and refused.value.field == next(iter(setting))


def test_the_default_settings_and_a_pseudo_ratio_of_0_pass_the_check():
    TrainConfig.from_flat({"manifest_id": "m"}).check()
    labeled_only = Recipe(pseudo_ratio=0)
    labeled_only.check()
    assert (
        labeled_only.pseudo_batch_size == 0 and Recipe(pseudo_ratio=0.01, batch_size=4).pseudo_batch_size == 1
    )
