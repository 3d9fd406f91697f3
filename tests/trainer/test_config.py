"""The config's parts: saved whole and read back, and one flat name per field for the CLI."""

import dataclasses
import json

import pytest

from trainer.config import Lineage, Recipe, Runtime, ServiceLink, TrainConfig


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
