"""Top-1, top-5 and per-class accuracy on a registered labeled dataset, without noise: of the
student while it trains, and of any registered teacher (``nst evaluate``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from nst.checkpoint import load_teacher
from nst.client import Client
from nst.transforms import eval_transform
from trainer.data import ImageTargets, Split, fetch_eval_split


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


def confusion_matrix(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> list[list[int]]:
    """Counts: row the true class, column the predicted one."""
    cells = targets * num_classes + logits.argmax(dim=1)
    counts = torch.bincount(cells, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).tolist()


def evaluate_teacher(
    client: Client,
    teacher_id: str,
    dataset_id: int,
    *,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
) -> dict:
    """A registered teacher (trained here or imported) on a labeled dataset, with its checkpoint
    pulled over HTTP: top-1, top-5, per-class accuracy and the confusion matrix."""
    with tempfile.TemporaryDirectory(prefix="nst-evaluate-") as tmp:
        model, metadata = load_teacher(client.download_teacher(teacher_id, Path(tmp) / "teacher.safetensors"))
    classes = metadata.class_names
    split = fetch_eval_split(client, dataset_id, classes)
    image_format = metadata.model_dump(
        include={"image_size", "channels", "mean", "std", "interpolation", "crop_pct"}
    )
    mode = "L" if metadata.channels == 1 else "RGB"
    logits = predict(
        model.to(device),
        split,
        eval_transform(**image_format),
        mode,
        device,
        batch_size=batch_size,
        num_workers=num_workers,
    )
    targets = torch.as_tensor(split.targets)
    result = accuracy(logits, targets, len(classes))
    return {
        "teacher_id": teacher_id,
        "dataset_id": dataset_id,
        "classes": classes,
        **result,
        "per_class": dict(zip(classes, result["per_class"], strict=True)),
        "confusion": confusion_matrix(logits, targets, len(classes)),
    }
