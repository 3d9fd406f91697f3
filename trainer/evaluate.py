"""Top-1, top-5 and per-class accuracy on a registered labeled dataset, without noise."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from trainer.data import ImageTargets, Split


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    split: Split,
    transform,
    mode: str,
    device: torch.device,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
) -> torch.Tensor:
    """Logits for every image of ``split``, in order."""
    was_training = model.training
    model.eval()
    loader = DataLoader(
        ImageTargets(split, transform, mode),
        batch_size=batch_size,
        num_workers=num_workers,
        generator=torch.Generator(),  # leaves the global RNG as training left it
    )
    outputs = []
    for images, _ in loader:
        images = images.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs.append(model(images).float().cpu())
    model.train(was_training)
    return torch.cat(outputs)


def accuracy(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict:
    top5 = logits.topk(min(5, num_classes), dim=1).indices
    correct1 = top5[:, 0] == targets
    per_class = [
        float(correct1[targets == c].float().mean()) if (targets == c).any() else None
        for c in range(num_classes)
    ]
    return {
        "top1": float(correct1.float().mean()),
        "top5": float((top5 == targets[:, None]).any(dim=1).float().mean()),
        "per_class": per_class,
        "count": len(targets),
    }


def evaluate(model, split: Split, transform, mode: str, device: torch.device, num_workers: int = 0) -> dict:
    logits = predict(model, split, transform, mode, device, num_workers=num_workers)
    return accuracy(logits, torch.as_tensor(split.targets), logits.shape[1])
