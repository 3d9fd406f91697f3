"""Top-1, top-5 and per-class accuracy on a registered labeled dataset, without noise: of the
student while it trains, and of any registered teacher (``nst evaluate``), with its calibration,
optionally its robustness, and the fitting of its temperature on a val split."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from nst.checkpoint import load_teacher
from nst.client import Client
from nst.transforms import eval_transform
from trainer.calibration import fit_temperature, nll, reliability
from trainer.data import ImageTargets, Split, fetch_eval_split
from trainer.robustness import EPSILONS, Normalised, corruption_names, robustness


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


def _teacher(client: Client, teacher_id: str):
    with tempfile.TemporaryDirectory(prefix="nst-evaluate-") as tmp:
        return load_teacher(client.download_teacher(teacher_id, Path(tmp) / "teacher.safetensors"))


def _image_format(metadata, *, normalised: bool = True) -> dict:
    image_format = metadata.model_dump(include={"image_size", "channels", "interpolation", "crop_pct"})
    if normalised:
        return image_format | {"mean": metadata.mean, "std": metadata.std}
    return image_format | {"mean": [0.0] * metadata.channels, "std": [1.0] * metadata.channels}


def model_logits(
    model, metadata, split: Split, device, batch_size: int = 256, num_workers: int = 0
) -> torch.Tensor:
    """Logits for every image of ``split``, through the clean preprocessing ``metadata`` records."""
    mode = "L" if metadata.channels == 1 else "RGB"
    transform = eval_transform(**_image_format(metadata))
    return predict(
        model.to(device), split, transform, mode, device, batch_size=batch_size, num_workers=num_workers
    )


def evaluate_teacher(
    client: Client,
    teacher_id: str,
    dataset_id: int,
    *,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
    robust: bool = False,
    epsilons: Sequence[float] = EPSILONS,
) -> dict:
    """A registered teacher (trained here or imported) on a labeled dataset, with its checkpoint
    pulled over HTTP: top-1, top-5, per-class accuracy, the confusion matrix and calibration (at
    T = 1, and at its calibrated temperature when it has one); with ``robust``, accuracy under
    corruptions and FGSM too (see trainer/robustness.py)."""
    model, metadata = _teacher(client, teacher_id)
    classes = metadata.class_names
    split = fetch_eval_split(client, dataset_id, classes)
    logits = model_logits(model, metadata, split, device, batch_size, num_workers)
    targets = torch.as_tensor(split.targets)
    result = accuracy(logits, targets, len(classes))
    calibration = [reliability(logits, targets)]
    temperature = client.teacher(teacher_id).get("calibrated_temperature")
    if temperature is not None:
        calibration.append(reliability(logits, targets, temperature=temperature))
    result = {
        "teacher_id": teacher_id,
        "dataset_id": dataset_id,
        "classes": classes,
        **result,
        "per_class": dict(zip(classes, result["per_class"], strict=True)),
        "confusion": confusion_matrix(logits, targets, len(classes)),
        "nll": nll(logits, targets),
        "calibration": calibration,
    }
    if robust:
        result["robustness"] = robustness(
            Normalised(model, metadata.mean, metadata.std),
            split,
            eval_transform(**_image_format(metadata, normalised=False)),
            "L" if metadata.channels == 1 else "RGB",
            device,
            corruptions=corruption_names(metadata.channels),
            epsilons=epsilons,
            batch_size=batch_size,
            num_workers=num_workers,
        )
    return result


class NotAValidationSplit(ValueError):
    """A temperature is fitted on held-out data, never on the test split it is judged on."""


def calibrate_teacher(
    client: Client,
    teacher_id: str,
    dataset_id: int,
    *,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
) -> dict:
    """Fit the teacher's temperature on a labeled ``val`` dataset (NLL of logits / T, by
    L-BFGS) and store it with the teacher, where labeling jobs can use it."""
    dataset = client.dataset(dataset_id)
    if dataset["split"] != "val":
        raise NotAValidationSplit(
            f"--dataset: dataset {dataset_id} is a {dataset['split']} split; fit the temperature on a "
            "labeled val split (register one with split=val)"
        )
    model, metadata = _teacher(client, teacher_id)
    split = fetch_eval_split(client, dataset_id, metadata.class_names)
    logits = model_logits(model, metadata, split, device, batch_size, num_workers)
    targets = torch.as_tensor(split.targets)
    temperature = fit_temperature(logits, targets)
    client.set_teacher_temperature(teacher_id, temperature)
    return {
        "teacher_id": teacher_id,
        "dataset_id": dataset_id,
        "count": len(targets),
        "temperature": temperature,
        "nll": {"before": nll(logits, targets), "after": nll(logits, targets, temperature)},
        "calibration": [reliability(logits, targets), reliability(logits, targets, temperature=temperature)],
    }
