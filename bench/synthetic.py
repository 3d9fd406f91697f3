"""Registry rows the label-store benchmarks need and nothing behind them."""

from __future__ import annotations

from service.models import Teacher


def placeholder_teacher(teacher_id: str, class_names, **overrides) -> Teacher:
    """A ready teacher with no checkpoint file: a job's labels need the row, never the model."""
    fields = {
        "name": "bench",
        "architecture": "resnet18",
        "image_size": 28,
        "channels": 1,
        "mean": [0.5],
        "std": [0.5],
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "model_kwargs": {},
        "generation": 0,
        "metrics": {},
        "status": "ready",
        "file_path": "/bench",
        "size_bytes": 0,
    }
    return Teacher(id=teacher_id, class_names=list(class_names), **(fields | overrides))
