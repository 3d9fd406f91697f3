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

from trainer.config import TrainConfig
from trainer.data import EndlessSampler, ImageTargets, Split, eval_transform


def freeze_shallow(model: torch.nn.Module, fraction: float) -> list[str]:
    """Freeze the first ``fraction`` of the parameter tensors, in the model's own order (stem
    first); return the names of those frozen."""
    named = list(model.named_parameters())
    frozen = [name for name, _ in named[: int(len(named) * fraction)]]
    for name, parameter in named:
        parameter.requires_grad_(name not in frozen)
    return frozen


def finetune_resolution(
    model: torch.nn.Module, labeled: Split, cfg: TrainConfig, device: torch.device
) -> tuple[torch.nn.Module, TrainConfig]:
    """Return the fine-tuned copy of ``model`` and the config at the new resolution."""
    size = cfg.finetune_image_size or round(cfg.image_size * 1.25)
    tuned_cfg = dataclasses.replace(cfg, image_size=size)
    tuned = copy.deepcopy(model).to(device)
    freeze_shallow(tuned, cfg.finetune_freeze)
    optimizer = create_optimizer_v2(
        [p for p in tuned.parameters() if p.requires_grad], opt=cfg.optimizer, lr=cfg.finetune_lr
    )
    sampler = EndlessSampler(labeled.copies, seed=cfg.seed + 7)
    mode = "L" if cfg.channels == 1 else "RGB"
    loader = DataLoader(
        ImageTargets(labeled, eval_transform(tuned_cfg), mode),
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        generator=torch.Generator(),
    )
    batches = iter(loader)
    tuned.train()  # batch-norm statistics adapt to the new resolution, as the fix intends
    for _ in range(cfg.finetune_steps):
        images, targets = next(batches)
        loss = F.cross_entropy(
            tuned(images.to(device)), targets.to(device), label_smoothing=cfg.label_smoothing
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for parameter in tuned.parameters():
        parameter.requires_grad_(True)
    return tuned.eval(), tuned_cfg
