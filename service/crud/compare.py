"""Label flips between two labeling jobs over the same dataset (teacher k against teacher k+1),
counted in SQL: the labels are joined on their item and never leave the database.
Data access only, no HTTP."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from service.crud.browse import TileRow, class_mapping, label_tile, mapped_label
from service.models import Dataset, Item, Job, Label

_A = aliased(Label, name="a")
_B = aliased(Label, name="b")


def _pairs(job_a: Job, job_b: Job):
    return select().select_from(_A).join(_B, (_B.item_id == _A.item_id) & (_B.job_id == job_b.id))


def summary(session: Session, *, job_a: Job, job_b: Job) -> tuple[int, list[tuple[int, int, int]]]:
    """(items labeled by both jobs, [(class in a, class in b, items)] for every change of class,
    most frequent first)."""
    pairs = _pairs(job_a, job_b).where(_A.job_id == job_a.id)
    compared = session.scalar(pairs.add_columns(func.count())) or 0
    changes = session.execute(
        pairs.add_columns(_A.predicted, _B.predicted, func.count())
        .where(_A.predicted != _B.predicted)
        .group_by(_A.predicted, _B.predicted)
        .order_by(func.count().desc(), _A.predicted, _B.predicted)
    ).all()
    return compared, [(int(a), int(b), int(n)) for a, b, n in changes]


def flip_tiles(
    session: Session,
    *,
    job_a: Job,
    job_b: Job,
    classes: list[str],
    from_class: int | None,
    to_class: int | None,
    cursor: int | None,
    limit: int,
    top_k: int,
) -> tuple[list[tuple[TileRow, int, float]], int | None]:
    """The flipped items in item order: each as job b's tile with job a's (class, confidence)."""
    query = (
        _pairs(job_a, job_b)
        .add_columns(_B, Item.uri, Item.label, _A.predicted, _A.confidence)
        .join(Item, Item.id == _A.item_id)
        .where(_A.job_id == job_a.id, _A.predicted != _B.predicted)
    )
    if from_class is not None:
        query = query.where(_A.predicted == from_class)
    if to_class is not None:
        query = query.where(_B.predicted == to_class)
    if cursor is not None:
        query = query.where(_A.item_id >= cursor)
    rows = session.execute(query.order_by(_A.item_id).limit(limit + 1)).all()
    mapping = class_mapping(session.get(Dataset, job_a.dataset_id).classes, classes)
    flips = [
        (
            label_tile(b, uri, mapped_label(mapping, item_label), top_k),
            int(a_class),
            float(a_confidence),
        )
        for b, uri, item_label, a_class, a_confidence in rows
    ]
    next_cursor = flips[limit][0].item_id if len(flips) > limit else None
    return flips[:limit], next_cursor
