"""Build a registered teacher: its timm model with the checked weights, and its un-noised
preprocessing (the checkpoint's own resize, centre crop and normalisation)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from nst import transforms
from service.core.db import session_scope
from service.models import Teacher


class InvalidCheckpoint(ValueError):
    """The weights do not fit the declared architecture; the message says where."""


@dataclass(frozen=True)
class ImageFormat:
    """How a teacher wants its images: the settings of its eval transform. Small and hashable,
    so it travels with every decode batch, and decode processes keep a transform per format
    rather than per teacher (a new teacher with the same format reuses them all)."""

    channels: int
    image_size: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)


@dataclass(frozen=True)
class TeacherSpec:
    architecture: str
    num_classes: int
    image_format: ImageFormat
    model_kwargs: tuple
    file_path: str

    @classmethod
    def from_row(cls, teacher: Teacher) -> TeacherSpec:
        image_format = ImageFormat(
            teacher.channels,
            teacher.image_size,
            teacher.interpolation,
            tuple(teacher.mean),
            tuple(teacher.std),
            teacher.crop_pct,
        )
        return cls(
            teacher.architecture,
            len(teacher.class_names),
            image_format,
            tuple(sorted(teacher.model_kwargs.items())),
            teacher.file_path,
        )


def build_model(spec: TeacherSpec) -> nn.Module:
    try:
        model = timm.create_model(
            spec.architecture,
            pretrained=False,
            num_classes=spec.num_classes,
            in_chans=spec.image_format.channels,
            **dict(spec.model_kwargs),
        )
    except (RuntimeError, TypeError, ValueError) as exc:  # timm: "Unknown model (...)"
        raise InvalidCheckpoint(f"architecture {spec.architecture!r} does not build: {exc}") from None
    state = load_file(spec.file_path, device="cpu")
    _check_state(model.state_dict(), state, spec)
    model.load_state_dict(state)
    return model.eval()


def _check_state(
    expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], spec: TeacherSpec
) -> None:
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    wrong = [
        f"{k}: file {tuple(given[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected.keys() & given.keys()
        if given[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s), e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), e.g. {sorted(wrong)[:3]}")
    if problems:
        raise InvalidCheckpoint(
            f"weights do not fit {spec.architecture} with {spec.num_classes} classes and "
            f"{spec.image_format.channels} channel(s): " + "; ".join(problems)
        )


@lru_cache(maxsize=8)
def eval_transform(image_format: ImageFormat):
    """timm's eval pipeline: resize to size/crop_pct, centre crop, to tensor, normalise."""
    return transforms.eval_transform(
        channels=image_format.channels,
        image_size=image_format.image_size,
        interpolation=image_format.interpolation,
        mean=image_format.mean,
        std=image_format.std,
        crop_pct=image_format.crop_pct,
    )


def validate(spec: TeacherSpec) -> None:
    """Raise ``InvalidCheckpoint`` unless the model builds, loads and outputs one score per class."""
    model = build_model(spec)
    with torch.inference_mode():
        out = model(torch.zeros(1, *spec.image_format.shape))
    if out.shape != (1, spec.num_classes):
        raise InvalidCheckpoint(
            f"the model outputs shape {tuple(out.shape)}, expected (1, {spec.num_classes})"
        )


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


@lru_cache(maxsize=2)
def cached_teacher(teacher_id: str, device: str) -> tuple[nn.Module, TeacherSpec]:
    """Loaded once per worker process (lazily, after the fork) and reused by every shard."""
    with session_scope() as session:
        spec = TeacherSpec.from_row(session.get(Teacher, teacher_id))
    model = build_model(spec).to(device)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    return model, spec
