"""The resolution fix: shallow layers frozen, deep layers and classifier tuned at the new size."""

import numpy as np
import pytest
import torch

from cli.fashion_mnist import CLASSES
from trainer.config import Recipe
from trainer.data import Split
from trainer.finetune import finetune_resolution, freeze_shallow
from trainer.train import build_model


@pytest.fixture
def split(fmnist) -> Split:
    paths = sorted((fmnist / "labeled").rglob("*.png"))
    labels = np.array([CLASSES.index(p.parent.name) for p in paths])
    return Split([str(p) for p in paths], labels, np.ones(len(paths), dtype=np.int64))


def test_freeze_shallow_takes_the_stem_first():
    model = build_model(Recipe(architecture="resnet10t"), 10)
    frozen = freeze_shallow(model, 0.5)
    names = [name for name, _ in model.named_parameters()]
    assert frozen == names[: len(names) // 2] and frozen[0].startswith("conv1")
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    assert model.fc.weight.requires_grad


def test_finetune_changes_only_deep_layers_and_records_the_new_size(split):
    cfg = Recipe(
        architecture="resnet10t",
        mean=[0.286],
        std=[0.353],
        finetune_steps=3,
        finetune_image_size=36,
        batch_size=16,
        finetune_lr=1e-2,
    )
    model = build_model(cfg, 10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned, tuned_cfg = finetune_resolution(model, split, cfg, torch.device("cpu"))
    assert tuned_cfg.image_size == 36 and cfg.image_size == 28
    names = [name for name, _ in tuned.named_parameters()]
    shallow, deep = names[: len(names) // 2], names[len(names) // 2 :]
    after = tuned.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in shallow)
    assert any(not torch.equal(before[n], after[n]) for n in deep)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy
    assert tuned(torch.zeros(2, 1, 36, 36)).shape == (2, 10)


def test_finetune_tunes_the_same_weights_whatever_the_global_generator_holds(split):
    """A run resumed after its student was tuned tunes it again: the same weights register the
    same teacher (IDs are content hashes), not a second one."""
    cfg = Recipe(
        architecture="resnet10t",
        mean=[0.286],
        std=[0.353],
        dropout=0.5,
        drop_path=0.2,
        finetune_steps=3,
        batch_size=16,
    )
    model = build_model(cfg, 10).eval()
    tuned = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        tuned.append(finetune_resolution(model, split, cfg, torch.device("cpu"))[0].state_dict())
        drawn_after = torch.rand(3)
        torch.manual_seed(global_seed)
        assert torch.equal(drawn_after, torch.rand(3)), "the caller's generator is given back as it was"
    assert all(torch.equal(tuned[0][k], tuned[1][k]) for k in tuned[0])
