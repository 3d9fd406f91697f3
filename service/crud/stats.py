"""Per-class statistics of a labeling job, from SQL aggregates (the labels never leave the
database): counts, counts at or above a threshold, mean confidence and a confidence histogram."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Double, case, cast, func, select
from sqlalchemy.orm import Session

from service.models import Dataset, Label

BINS = 10
BIN_EDGES = [i / BINS for i in range(BINS + 1)]  # i / 10 is the double nearest each edge


@dataclass
class ClassAggregate:
    count: int = 0
    above: int = 0
    confidence_sum: float = 0.0
    histogram: list[int] = field(default_factory=lambda: [0] * BINS)


def _bin(confidence) -> case:
    """Bin i holds [i/10, (i+1)/10); the last bin also holds 1.0. Comparisons, not floor(), which
    SQLite may lack and which would need a cast that rounds differently on each database."""
    return case(*[(confidence < BIN_EDGES[i + 1], i) for i in range(BINS - 1)], else_=BINS - 1)


def class_aggregates(
    session: Session, *, job_id: int, num_classes: int, threshold: float
) -> list[ClassAggregate]:
    binned = (
        select(
            Label.predicted.label("predicted"),
            _bin(Label.confidence).label("bin"),
            case((Label.confidence >= threshold, 1), else_=0).label("above"),
            # PostgreSQL sums REAL in float32; a million of them need double precision.
            cast(Label.confidence, Double).label("confidence"),
        )
        .where(Label.job_id == job_id)
        .subquery()
    )
    rows = session.execute(
        select(
            binned.c.predicted,
            binned.c.bin,
            func.count(),
            func.sum(binned.c.above),
            func.sum(binned.c.confidence),
        ).group_by(binned.c.predicted, binned.c.bin)
    )
    aggregates = [ClassAggregate() for _ in range(num_classes)]
    for predicted, bin_index, count, above, confidence_sum in rows:
        aggregate = aggregates[predicted]
        aggregate.count += count
        aggregate.above += int(above)
        aggregate.confidence_sum += float(confidence_sum)
        aggregate.histogram[bin_index] = count
    return aggregates


def imbalance_ratio(counts: list[int]) -> float | None:
    """Largest class over smallest; None when a class is empty (the ratio is unbounded)."""
    if not counts or min(counts) == 0:
        return None
    return max(counts) / min(counts)


def matching_labeled_dataset(session: Session, *, classes: list[str]) -> Dataset | None:
    """The newest labeled train split with exactly these classes, in this order."""
    candidates = session.scalars(
        select(Dataset).where(Dataset.kind == "labeled", Dataset.split == "train").order_by(Dataset.id.desc())
    )
    return next((d for d in candidates if d.classes == classes), None)
