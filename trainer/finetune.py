"""The paper's optional fix for the train/test resolution discrepancy: after training at a
small resolution, fine-tune the deep layers and the classifier for a short time at the test
resolution on unaugmented labeled images, with the shallow layers frozen."""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader

from nst.transforms import eval_transform
from trainer.config import Recipe
from trainer.data import EndlessSampler, ImageTargets, Split


def freeze_shallow(model: torch.nn.Module, fraction: float) -> list[str]:
    """Freeze the first ``fraction`` of the parameter tensors, in the model's own order (stem
    first); return the names of those frozen."""
    named = list(model.named_parameters())
    frozen = [name for name, _ in named[: int(len(named) * fraction)]]
    for name, parameter in named:
        parameter.requires_grad_(name not in frozen)
    return frozen


def finetune_resolution(
    model: torch.nn.Module, labeled: Split, recipe: Recipe, device: torch.device, *, workers: int = 0
) -> tuple[torch.nn.Module, Recipe]:
    """Return the fine-tuned copy of ``model`` and the recipe at the new resolution."""
    size = recipe.finetune_image_size or round(recipe.image_size * 1.25)
    tuned_recipe = dataclasses.replace(recipe, image_size=size)
    tuned = copy.deepcopy(model).to(device)
    freeze_shallow(tuned, recipe.finetune_freeze)
    optimizer = create_optimizer_v2(
        [p for p in tuned.parameters() if p.requires_grad], opt=recipe.optimizer, lr=recipe.finetune_lr
    )
    seed = recipe.seed + 7
    sampler = EndlessSampler(labeled.copies, seed=seed)
    loader = DataLoader(
        ImageTargets(labeled, eval_transform(**tuned_recipe.image_format), recipe.mode),
        batch_size=recipe.batch_size,
        sampler=sampler,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
    )
    batches = iter(loader)
    tuned.train()  # batch-norm statistics adapt to the new resolution, as the fix intends
    # Dropout and stochastic depth draw from the global generator: seeded here (and given back
    # afterwards), a run resumed after the student was tuned tunes the same weights again, so
    # it registers the same teacher (IDs are content hashes) instead of a second one.
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for _ in range(recipe.finetune_steps):
            images, targets = next(batches)
            loss = F.cross_entropy(
                tuned(images.to(device)), targets.to(device), label_smoothing=recipe.label_smoothing
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    for parameter in tuned.parameters():
        parameter.requires_grad_(True)
    return tuned.eval(), tuned_recipe
