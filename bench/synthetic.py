"""Registry rows the label-store benchmarks need and nothing behind them."""

from __future__ import annotations

from service.models import Dataset, Teacher


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


def placeholder_dataset(name: str, *, kind: str = "unlabeled", **overrides) -> Dataset:
    """A dataset row with no files behind it: its items are written straight into the table."""
    fields = {
        "modality": "image",
        "source_path": f"/bench/{name}",
        "source_format": "folder" if kind == "labeled" else "list",
    }
    return Dataset(name=name, kind=kind, **(fields | overrides))


def job_options(*, batch_size: int, shard_size: int, top_k: int = 10) -> dict:
    """A labeling job's options as ``service.crud.jobs.create_job`` takes them."""
    return {
        "batch_size": batch_size,
        "temperature": 1.0,
        "top_k": top_k,
        "full_distribution_max": 100,
        "shard_size": shard_size,
    }
