"""Pseudo-label quality of a job over a labeled dataset (a probe): per confidence threshold, how
many labels a threshold keeps and how many of those are right, overall and per predicted class,
counted in SQL (the labels never leave the database)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, case, func, select
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
    threshold, those at or above it and those of them that are right. A dataset class the
    teacher lacks never counts as right."""
    if list(dataset_classes) == list(teacher_classes):
        truth = Item.label
    else:
        to_teacher = {
            i: list(teacher_classes).index(n) for i, n in enumerate(dataset_classes) if n in teacher_classes
        }
        truth = case(to_teacher, value=Item.label, else_=-1) if to_teacher else -1
    right = Label.predicted == truth
    columns = [Label.predicted, func.count()]
    for threshold in thresholds:
        kept = Label.confidence >= threshold
        columns += [func.count().filter(kept), func.count().filter(and_(kept, right))]
    rows = session.execute(
        select(*columns)
        .join(Item, Item.id == Label.item_id)
        .where(Label.job_id == job_id, Item.label.is_not(None))
        .group_by(Label.predicted)
    ).all()
    counts = [ClassCounts(0, [0] * len(thresholds), [0] * len(thresholds)) for _ in teacher_classes]
    for predicted, labels, *pairs in rows:
        counts[predicted] = ClassCounts(labels, list(pairs[0::2]), list(pairs[1::2]))
    return counts
