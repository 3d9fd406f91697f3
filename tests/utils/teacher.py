"""A small real teacher for tests: timm's resnet10t, trained a few steps on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from cli.fashion_mnist import CLASSES
from nst.checkpoint import save_teacher
from nst.teacher_metadata import TeacherMetadata

TEACHER_ARCH = "resnet10t"
MEAN, STD = 0.286, 0.353  # Fashion-MNIST pixel statistics


def metadata(**overrides) -> dict:
    """The tiny teacher's metadata as JSON; overrides may break the contract, to test refusals."""
    valid = TeacherMetadata(
        architecture=TEACHER_ARCH,
        class_names=CLASSES,
        image_size=28,
        channels=1,
        mean=[MEAN],
        std=[STD],
        interpolation="bilinear",
        crop_pct=1.0,
    )
    return valid.model_dump(mode="json", exclude_unset=True) | overrides


def load_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
    """Plain PyTorch preprocessing, independent of the service: [0,1] pixels, normalised."""
    paths = sorted(folder.rglob("*.png"))
    pixels = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32) for p in paths])
    x = (torch.from_numpy(pixels).unsqueeze(1) / 255.0 - MEAN) / STD
    y = torch.tensor([CLASSES.index(p.parent.name) if p.parent.name in CLASSES else -1 for p in paths])
    return x, y, paths


def train_tiny_teacher(labeled: Path, out: Path, steps: int = 30) -> Path:
    torch.manual_seed(0)
    model = timm.create_model(TEACHER_ARCH, num_classes=len(CLASSES), in_chans=1)
    x, y, _ = load_folder(labeled)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = torch.randperm(len(x))[:64]
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return save_teacher(model.state_dict(), out, metadata())


def direct_probs(teacher_file: Path, folder: Path) -> dict[str, torch.Tensor]:
    """The truth for a labeling job: the same weights, plain PyTorch, one forward pass."""
    model = timm.create_model(TEACHER_ARCH, num_classes=len(CLASSES), in_chans=1)
    model.load_state_dict(load_file(str(teacher_file)))
    x, _, paths = load_folder(folder)
    with torch.inference_mode():
        probs = model.eval()(x).softmax(dim=1)
    return {str(p): probs[i] for i, p in enumerate(paths)}
