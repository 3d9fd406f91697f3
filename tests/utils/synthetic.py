"""Registry rows and labels written straight into the database: teachers without files, datasets
without images, and finished jobs whose labels are chosen by the test.

A synthetic label for class ``c`` with confidence ``q`` puts ``q`` on ``c`` and spreads ``1 - q``
evenly over the other classes. Confidences are rounded to float32 first, as a worker's are, so
that SQLite (which keeps doubles) and PostgreSQL (REAL) hold the same values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import insert, select

from service.core.db import session_scope
from service.core.migrate import upgrade_head
from service.crud.jobs import create_job
from service.models import Dataset, Item, Label, Teacher, utcnow

JOB_OPTIONS = {
    "batch_size": 64,
    "temperature": 1.0,
    "top_k": 3,
    "full_distribution_max": 100,
    "shard_size": 1000,
}


@dataclass
class SyntheticJob:
    id: int
    teacher_id: str
    dataset_id: int
    item_ids: list[int]


def migrate() -> None:
    upgrade_head()


def f32(value: float) -> float:
    return float(np.float32(value))


def teacher(classes: Sequence[str], name: str = "synthetic") -> str:
    teacher_id = hashlib.sha256(f"{name}:{list(classes)}".encode()).hexdigest()
    with session_scope() as session:
        if session.get(Teacher, teacher_id) is None:
            session.add(
                Teacher(
                    id=teacher_id,
                    name=name,
                    architecture="resnet10t",
                    class_names=list(classes),
                    image_size=28,
                    channels=1,
                    mean=[0.5],
                    std=[0.5],
                    interpolation="bilinear",
                    crop_pct=1.0,
                    model_kwargs={},
                    generation=0,
                    metrics={},
                    status="ready",
                    file_path="/nonexistent",
                    size_bytes=0,
                )
            )
    return teacher_id


def _dataset(
    session, *, kind: str, split: str | None, classes, labels: Sequence[int | None], name: str
) -> Dataset:
    dataset = Dataset(
        name=name,
        kind=kind,
        split=split,
        modality="image",
        source_path=f"/synthetic/{name}",
        source_format="list",
        classes=classes,
        item_count=len(labels),
    )
    session.add(dataset)
    session.flush()
    rows = [
        {"dataset_id": dataset.id, "ordinal": i, "uri": f"/synthetic/{name}/{i}.png", "label": label}
        for i, label in enumerate(labels)
    ]
    if rows:
        session.execute(insert(Item), rows)
    return dataset


def labeled_dataset(
    classes: Sequence[str], labels: Sequence[int], *, split: str = "train", name="labeled"
) -> int:
    with session_scope() as session:
        return _dataset(
            session, kind="labeled", split=split, classes=list(classes), labels=labels, name=name
        ).id


def distribution(predicted: int, confidence: float, num_classes: int) -> np.ndarray:
    probs = np.full(num_classes, (1.0 - confidence) / (num_classes - 1), dtype=np.float32)
    probs[predicted] = confidence
    return probs


def label_row(
    job_id: int, item_id: int, predicted: int, confidence: float, num_classes: int, top_k: int | None
):
    probs = distribution(predicted, confidence, num_classes)
    row = {
        "job_id": job_id,
        "item_id": item_id,
        "predicted": predicted,
        "confidence": f32(confidence),
        "entropy": 0.0,
        "top_indices": None,
        "rest_mass": None,
    }
    if top_k is None:
        return row | {"probs": probs.astype(np.float16).tobytes()}
    top = np.argsort(-probs, kind="stable")[:top_k].astype(np.int32)
    rest = float(1.0 - probs[top].sum())
    return row | {
        "probs": probs[top].astype(np.float16).tobytes(),
        "top_indices": top.tobytes(),
        "rest_mass": rest,
    }


def finished_job(
    teacher_id: str,
    labels: Sequence[tuple[int, float]],
    *,
    dataset_id: int | None = None,
    state: str = "succeeded",
    full_distribution_max: int = 100,
    shard_size: int = JOB_OPTIONS["shard_size"],
) -> SyntheticJob:
    """A job over a new unlabeled dataset (or ``dataset_id``), one label per item as
    ``(predicted, confidence)``, its single shard in ``state``."""
    with session_scope() as session:
        classes = session.get(Teacher, teacher_id).class_names
        if dataset_id is None:
            dataset_id = _dataset(
                session, kind="unlabeled", split=None, classes=None, labels=[None] * len(labels), name="pool"
            ).id
        item_ids = list(
            session.scalars(select(Item.id).where(Item.dataset_id == dataset_id).order_by(Item.id))
        )
        options = JOB_OPTIONS | {"full_distribution_max": full_distribution_max, "shard_size": shard_size}
        job, shards = create_job(
            session,
            teacher_id=teacher_id,
            dataset_id=dataset_id,
            items_total=len(item_ids),
            num_classes=len(classes),
            options=options,
        )
        top_k = None if len(classes) <= full_distribution_max else options["top_k"]
        rows = [
            label_row(job.id, item_id, c, q, len(classes), top_k)
            for item_id, (c, q) in zip(item_ids, labels, strict=True)
        ]
        if rows:
            session.execute(insert(Label), rows)
        for shard in shards:
            shard.state, shard.attempts = state, 1
            shard.items_done = shard.end_ordinal - shard.start_ordinal
            shard.started_at = shard.finished_at = utcnow()
        return SyntheticJob(job.id, teacher_id, dataset_id, item_ids)
