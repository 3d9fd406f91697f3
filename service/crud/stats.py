"""Per-class statistics of a labeling job, from its label bins (the labels never leave the
database): counts, counts at or above a threshold, mean confidence and a confidence histogram."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, literal, select, union_all
from sqlalchemy.orm import Session

from service.crud import label_bins
from service.models import Dataset, Label

BINS = 10
BIN_EDGES = [i / BINS for i in range(BINS + 1)]  # i / 10 is the double nearest each edge
STEPS_PER_BIN = label_bins.GRID // BINS


@dataclass
class ClassAggregate:
    count: int = 0
    above: int = 0
    confidence_sum: float = 0.0
    histogram: list[int] = field(default_factory=lambda: [0] * BINS)


def class_aggregates(
    session: Session, *, job_id: int, num_classes: int, threshold: float
) -> list[ClassAggregate]:
    """From the job's label bins (steps of 1/GRID, ``label_bins``): bin ``i`` of the histogram
    holds [i/10, (i+1)/10), which is steps ``10 i`` to ``10 i + 9`` (``10 i / 100`` and ``i / 10``
    are the same double), and the last also holds 1.0. Only a threshold off the grid needs the
    labels themselves, for its counts."""
    aggregates = [ClassAggregate() for _ in range(num_classes)]
    step = label_bins.threshold_step(threshold)
    query = label_bins.job_class_bins(job_id=job_id, steps_per_bin=STEPS_PER_BIN, bins=BINS, above_step=step)
    if step is None:
        # The labels' counts at the threshold as rows of bin -1, in the same statement as the bins:
        # one snapshot, so a job still being written cannot show more labels above than in all.
        above = (
            select(Label.predicted, literal(-1), literal(0), func.count(), literal(0.0))
            .where(Label.job_id == job_id, Label.confidence >= threshold)
            .group_by(Label.predicted)
        )
        query = union_all(query, above)
    for predicted, bin_index, count, above_count, confidence_sum in session.execute(query):
        aggregate = aggregates[predicted]
        if bin_index < 0:
            aggregate.above = int(above_count)
            continue
        aggregate.count += int(count)
        aggregate.above += int(above_count)
        aggregate.confidence_sum += float(confidence_sum)
        aggregate.histogram[bin_index] = int(count)
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
