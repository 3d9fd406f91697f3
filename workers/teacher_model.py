"""Build a registered teacher: its timm model with the checked weights, and its un-noised
preprocessing (the checkpoint's own resize, centre crop and normalisation); with the paper's
noise on for the noised-teacher ablation only (``nst.noise``)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import load_file
from timm.data import rand_augment_transform, str_to_pil_interp
from timm.data.transforms import MaybeToTensor
from torch import nn
from torchvision.transforms import Compose, Normalize, PILToTensor
from torchvision.transforms.functional import normalize as normalize_
from torchvision.transforms.functional import pil_to_tensor

from nst import noise, storage, transforms
from nst.teacher_metadata import check_model_kwargs
from service.core.db import session_scope
from service.models import Teacher
from workers import graph_cache, host_cache
from workers.inference import Runner, prepare


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
    randaugment: str | None = None  # timm's RandAugment spec before the eval transform: the ablation

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
    sha256: str  # the teacher's ID: its file's content

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
            teacher.id,
        )


def build_model(spec: TeacherSpec, *, noised: bool = False) -> nn.Module:
    """The teacher in eval mode; ``noised``: built with the paper's dropout and stochastic depth
    (they add no weights) and with them active."""
    try:  # again here: a row written before the API checked them must not name a file either
        check_model_kwargs(dict(spec.model_kwargs))
    except ValueError as exc:
        raise InvalidCheckpoint(f"model_kwargs: {exc}") from None
    model_kwargs = dict(spec.model_kwargs)
    if noised:
        model_kwargs.update(drop_rate=noise.DROPOUT, drop_path_rate=noise.DROP_PATH)
    try:
        model = timm.create_model(
            spec.architecture,
            pretrained=False,
            num_classes=spec.num_classes,
            in_chans=spec.image_format.channels,
            **model_kwargs,
        )
    except (RuntimeError, TypeError, ValueError) as exc:  # timm: "Unknown model (...)"
        raise InvalidCheckpoint(f"architecture {spec.architecture!r} does not build: {exc}") from None
    with local_checkpoint(spec.file_path, spec.sha256) as path:
        state = load_file(path, device="cpu")
    _check_state(model.state_dict(), state, spec)
    model.load_state_dict(state)
    return noise.model_noise_on(model) if noised else model.eval()


@contextmanager
def local_checkpoint(file_path: str, sha256: str) -> Iterator[str]:
    """The checkpoint as a local file, checked against its sha256, for the duration. One in an
    object store is fetched once into the host's cache (``workers.host_cache``: ``teachers/``)
    and checked as it arrives; a local one (a shared volume, a file registered by its path) is
    hashed where it lies, so a file changed or cut short since it was registered is refused,
    not labeled with."""
    if storage.is_url(file_path):
        copy = host_cache.root() / "teachers" / f"{sha256}{Path(storage.name(file_path)).suffix}"
        with host_cache.held(copy):
            yield str(storage.cached_copy(file_path, copy, sha256))
        return
    found = os.stat(file_path)
    if _local_sha256(file_path, found.st_size, found.st_mtime_ns) != sha256:
        raise InvalidCheckpoint(f"{file_path!r} is no longer the file registered: its sha256 changed")
    yield file_path


@lru_cache(maxsize=64)
def _local_sha256(file_path: str, size: int, mtime_ns: int) -> str:
    """Hashed once per version of the file (its size and modification time are the key)."""
    digest = hashlib.sha256()
    with open(file_path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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
def image_transform(image_format: ImageFormat):
    """One image to what the model takes: the eval transform, after RandAugment for the ablation.
    The worker splits it in two (``pixel_transform``, then ``normalise`` on the whole batch)."""
    clean = eval_transform(image_format)
    if image_format.randaugment is None:
        return clean
    return Compose([_randaugment(image_format), clean])


@lru_cache(maxsize=8)
def pixel_transform(image_format: ImageFormat):
    """``image_transform`` up to its pixels, as a uint8 tensor: the steps on the PIL image
    (RandAugment for the ablation, resize, centre crop) without timm's to-tensor and normalise,
    which ``normalise`` applies to a whole batch with the same arithmetic. Per image, those two
    steps cost as much as reading and decoding a 28-pixel PNG."""
    *geometry, to_tensor, normalize = eval_transform(image_format).transforms
    if not (isinstance(to_tensor, MaybeToTensor) and isinstance(normalize, Normalize)):
        raise TypeError(f"timm's eval transform changed shape: {eval_transform(image_format)}")
    augment = [] if image_format.randaugment is None else [_randaugment(image_format)]
    return Compose([*augment, *geometry, PILToTensor()])


@lru_cache(maxsize=16)
def keeps_pixels(image_format: ImageFormat) -> bool:
    """Whether ``pixel_transform`` returns an image already square at the teacher's size as it
    is (resizing to the size it has, cropping to the whole of it), so that the decode can skip
    it: at 28 px its steps cost a third of a file's read and decode. Tried on noise, since
    resizing and cropping do not look at the content; never with RandAugment."""
    if image_format.randaugment is not None:
        return False
    size = image_format.image_size
    shape = (size, size) if image_format.channels == 1 else (size, size, 3)
    probe = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8), image_format.mode
    )
    return torch.equal(pixel_transform(image_format)(probe), pil_to_tensor(probe))


def normalise(pixels: torch.Tensor, image_format: ImageFormat) -> torch.Tensor:
    """uint8 pixels (N, C, H, W) to the model's input: what timm's to-tensor (divide by 255) and
    normalise (subtract the mean, divide by the std) do to each image, in one pass over the batch."""
    return normalize_(pixels.float().div_(255), list(image_format.mean), list(image_format.std), inplace=True)


def _randaugment(image_format: ImageFormat):
    return rand_augment_transform(
        image_format.randaugment,
        {  # as timm's training transform sets them for the same image size and mean
            "translate_const": int(image_format.image_size * 0.45),
            "img_mean": tuple(min(255, round(255 * m)) for m in image_format.mean),
            "interpolation": str_to_pil_interp(image_format.interpolation),
        },
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


def resolve_device(setting: str, *, index: int | None = None, count: int | None = None) -> torch.device:
    """The device a worker process labels on. ``cuda:N`` pins one GPU; ``auto`` and ``cuda`` give
    pool process ``index`` GPU ``index`` (modulo the ``count`` GPUs), so ``nst worker
    --concurrency N`` on an N-GPU host runs one process per GPU. By default ``index`` is the
    Celery pool process's own (billiard numbers them 0..N-1) and ``count`` the visible GPUs."""
    if setting == "cpu" or setting.startswith("cuda:"):
        return torch.device(setting)
    count = torch.cuda.device_count() if count is None else count
    if count == 0:
        if setting == "cuda":
            raise RuntimeError("NST_WORKER_DEVICE is cuda but no GPU is visible")
        return torch.device("cpu")
    index = _pool_index() if index is None else index
    return torch.device(f"cuda:{index % count}")


def _pool_index() -> int:
    from billiard.process import current_process

    return getattr(current_process(), "index", None) or 0


@lru_cache(maxsize=4)  # a teacher in a few modes (bench/label_throughput.py cycles three)
def cached_teacher(
    teacher_id: str, device: str, mode: str = "eager", batch_size: int = 64, noised: bool = False
) -> tuple[Runner, TeacherSpec]:
    """Loaded and prepared once per worker process (lazily, after the fork) and teacher, and
    reused by every shard; a job with another mode or batch size prepares its own. A converted
    graph is made once per host and kept (``graph_cache``). A noised
    teacher runs in eager float32 (a compiled or converted graph would fix its noise) and its
    spec's image format carries the RandAugment its decode processes apply."""
    with session_scope() as session:
        spec = TeacherSpec.from_row(session.get(Teacher, teacher_id))
    if noised:
        augment = noise.randaugment_spec(spec.image_format.image_size)
        spec = replace(spec, image_format=replace(spec.image_format, randaugment=augment))
        mode = "eager"
    model = build_model(spec, noised=noised).to(device)
    saved_as = None
    if mode == "openvino":  # only its conversion is worth keeping (torch.compile keeps its own cache)
        saved_as = graph_cache.folder_for(
            mode,
            spec.sha256,
            spec.architecture,
            spec.num_classes,
            spec.model_kwargs,
            spec.image_format.shape,
            batch_size,
        )
    return prepare(model, spec.image_format.shape, device, mode, batch_size, saved_as), spec
