"""Write registrable teacher checkpoints: safetensors weights with the metadata embedded.

``convert`` turns a PyTorch state dict (loaded with ``weights_only=True``, never unpickled as
code) into one, including external pretrained weights whose tensor names differ from timm's but
whose tensors line up with the timm architecture in order (e.g. the EfficientNet-Lite0 package).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nst.atomic import replacing
from nst.teacher_metadata import TeacherMetadata

WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "weights")


class ConversionError(ValueError):
    pass


def save_teacher(
    state_dict: dict[str, torch.Tensor], path: str | Path, metadata: TeacherMetadata | Mapping[str, Any]
) -> Path:
    """Write the weights with ``metadata`` under ``__metadata__['nst']``, checked against the
    contract first, so a file written here is one the service accepts."""
    header = TeacherMetadata.model_validate(metadata).model_dump_json()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    with replacing(path) as part:  # a crash while saving leaves the previous student whole
        save_file(tensors, str(part), metadata={"nst": header})
    return path


def read_metadata(path: str | Path) -> TeacherMetadata | None:
    """The metadata ``save_teacher`` embedded, or None for a plain safetensors file."""
    with safe_open(str(path), framework="pt") as handle:
        header = (handle.metadata() or {}).get("nst")
    return None if header is None else TeacherMetadata.model_validate_json(header)


def load_teacher(path: str | Path) -> tuple[torch.nn.Module, TeacherMetadata]:
    """The teacher in a checkpoint written by ``save_teacher``: its timm model in eval mode with
    the weights loaded, and its metadata."""
    metadata = read_metadata(path)
    if metadata is None:
        raise ConversionError(f"{path}: no nst metadata; is it a teacher checkpoint?")
    with safe_open(str(path), framework="pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    model = timm.create_model(
        metadata.architecture,
        pretrained=False,
        num_classes=len(metadata.class_names),
        in_chans=metadata.channels,
        **metadata.model_kwargs,
    )
    model.load_state_dict(state)
    return model.eval(), metadata


def default_metadata(
    architecture: str, class_names: list[str], channels: int = 3, **overrides: Any
) -> dict[str, Any]:
    """Preprocessing from timm's pretrained config for the architecture, unless overridden."""
    cfg = timm.models.get_pretrained_cfg(architecture)
    cfg = cfg.to_dict() if cfg is not None else {}
    mean = list(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = list(cfg.get("std", (0.229, 0.224, 0.225)))
    if channels == 1:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    metadata = {
        "architecture": architecture,
        "class_names": list(class_names),
        "image_size": int(cfg.get("input_size", (3, 224, 224))[-1]),
        "channels": channels,
        "mean": mean,
        "std": std,
        "interpolation": cfg.get("interpolation", "bilinear") or "bilinear",
        "crop_pct": float(cfg.get("crop_pct", 1.0) or 1.0),
    }
    metadata.update({k: v for k, v in overrides.items() if v is not None})
    return TeacherMetadata.model_validate(metadata).model_dump()


def _unwrap(raw: Any) -> dict[str, torch.Tensor]:
    for key in WRAPPER_KEYS:
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ConversionError("the file does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in raw.items()}


def convert(
    source: str | Path,
    *,
    architecture: str,
    num_classes: int,
    channels: int = 3,
    reset_classifier: bool = False,
) -> dict[str, torch.Tensor]:
    """Map a state dict onto ``architecture``: by name, else by order with equal shapes."""
    given = _unwrap(torch.load(source, map_location="cpu", weights_only=True))
    model = timm.create_model(architecture, pretrained=False, num_classes=num_classes, in_chans=channels)
    target = model.state_dict()
    if given.keys() != target.keys():
        given = _rename_by_order(given, target, skip_head=reset_classifier, model=model)
    head = _classifier_keys(model) if reset_classifier else set()
    mismatched = [k for k in target if k not in head and given[k].shape != target[k].shape]
    if mismatched:
        k = mismatched[0]
        hint = " (a different class count? pass --reset-classifier)" if k in _classifier_keys(model) else ""
        raise ConversionError(
            f"{len(mismatched)} tensor(s) do not fit {architecture}: {k} is "
            f"{tuple(given[k].shape)} in the file, {tuple(target[k].shape)} in the model{hint}"
        )
    return {k: (target[k] if k in head else given[k]) for k in target}


def _classifier_keys(model: torch.nn.Module) -> set[str]:
    prefix = model.pretrained_cfg.get("classifier", "classifier")
    return {k for k in model.state_dict() if k.startswith(prefix + ".")}


def _rename_by_order(given: dict, target: dict, *, skip_head: bool, model) -> dict:
    if len(given) != len(target):
        raise ConversionError(
            f"the file holds {len(given)} tensors, the model {len(target)}; names differ too, so "
            "they cannot be matched"
        )
    head = _classifier_keys(model) if skip_head else set()
    for (gk, gv), (tk, tv) in zip(given.items(), target.items(), strict=True):
        if tk not in head and gv.shape != tv.shape:
            raise ConversionError(
                f"tensors do not line up in order: file {gk} {tuple(gv.shape)} vs model {tk} "
                f"{tuple(tv.shape)}"
            )
    return dict(zip(target, given.values(), strict=True))
