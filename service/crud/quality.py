"""Pseudo-label quality of a job over a labeled dataset (a probe): per confidence threshold, how
many labels a threshold keeps and how many of those are right, overall and per predicted class,
counted in SQL (the labels never leave the database)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Item, Label


@dataclass
class ClassCounts:
    labels: int
    kept: list[int]  # per threshold
    right: list[int]


def class_counts(
    session: Session,
    *,
    job_id: int,
    thresholds: Sequence[float],
    dataset_classes: Sequence[str],
    teacher_classes: Sequence[str],
) -> list[ClassCounts]:
    """Per teacher class (the predicted one), the labels of truly labeled items and, per
    threshold, those at or above it and those of them that are right. Counted per pair of
    predicted and true class in SQL, then matched here by class name: a dataset class the teacher
    lacks never counts as right."""
    to_teacher = {name: i for i, name in enumerate(teacher_classes)}
    truth_to_teacher = [to_teacher.get(name, -1) for name in dataset_classes]
    columns = [Label.predicted, Item.label, func.count()]
    columns += [func.count().filter(Label.confidence >= threshold) for threshold in thresholds]
    rows = session.execute(
        select(*columns)
        .join(Item, Item.id == Label.item_id)
        .where(Label.job_id == job_id, Item.label.is_not(None))
        .group_by(Label.predicted, Item.label)
    )
    counts = [ClassCounts(0, [0] * len(thresholds), [0] * len(thresholds)) for _ in teacher_classes]
    for predicted, label, labels, *kept in rows:
        into = counts[predicted]
        into.labels += labels
        is_right = truth_to_teacher[label] == predicted
        for i, count in enumerate(kept):
            into.kept[i] += count
            into.right[i] += count if is_right else 0
    return counts
