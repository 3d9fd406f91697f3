"""Continuing `nst iterate` in an out_dir is refused when the recipe differs from the one its
generations were trained with, and allowed when only operational settings differ."""

import dataclasses
import json
from pathlib import Path

import pytest

from trainer.config import TrainConfig
from trainer.iterate import IterateConfig, RecipeChanged, _config_dict, _load_rows

ROWS = [{"generation": 0, "student": "t0", "student_top1": 0.5}]


def _config(tmp_path, **changes) -> IterateConfig:
    train = TrainConfig(manifest_id="", steps=100, workers=2)
    base = IterateConfig(labeled_dataset_id=1, unlabeled_dataset_id=2, out_dir=str(tmp_path), train=train)
    return dataclasses.replace(base, **changes)


def _write_state(cfg: IterateConfig, drop: tuple[str, ...] = ()) -> None:
    config = _config_dict(cfg)
    for name in drop:
        config.pop(name)
    state = {"config": config, "rows": ROWS}
    (Path(cfg.out_dir) / "iterate.json").write_text(json.dumps(state))


def test_same_recipe_with_other_operational_settings_continues(tmp_path):
    _write_state(_config(tmp_path))
    later = _config(
        tmp_path,
        generations=5,
        shard_size=500,
        train=TrainConfig(manifest_id="", steps=100, workers=0, amp=False, checkpoint_every=7),
    )
    assert _load_rows(later) == ROWS


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"threshold": 0.5}, "threshold: 0.3 -> 0.5"),
        ({"soft": False}, "soft: True -> False"),
        ({"students": ["resnet18", "resnet34"]}, "students: ['resnet18'] -> ['resnet18', 'resnet34']"),
        ({"train": TrainConfig(manifest_id="", steps=200, workers=2)}, "train.steps: 100 -> 200"),
    ],
)
def test_changed_recipe_is_refused_naming_the_setting(tmp_path, changes, named):
    _write_state(_config(tmp_path))
    with pytest.raises(RecipeChanged) as refused:
        _load_rows(_config(tmp_path, **changes))
    assert named in str(refused.value) and "iterate.json" in str(refused.value)


def test_setting_missing_from_an_older_file_is_not_compared(tmp_path):
    _write_state(_config(tmp_path), drop=("temperature",))
    assert _load_rows(_config(tmp_path, temperature=2.0)) == ROWS
