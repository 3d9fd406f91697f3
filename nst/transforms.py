"""A model's clean preprocessing, from the image format its checkpoint records: resize to
size / crop_pct, centre crop, to tensor, normalise (timm's eval pipeline)."""

from __future__ import annotations

from collections.abc import Sequence

from timm.data import create_transform


def eval_transform(
    *,
    channels: int,
    image_size: int,
    interpolation: str,
    mean: Sequence[float],
    std: Sequence[float],
    crop_pct: float,
):
    return create_transform(
        input_size=(channels, image_size, image_size),
        is_training=False,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
        crop_pct=crop_pct,
    )
