"""A job's labels per class and confidence step, read from ``label_bins`` (kept by a trigger in
the labels' own transaction, migration 0010) instead of a scan over every label.

A step is the highest multiple of 1/GRID at or below a confidence, compared in doubles exactly
as the SQL filters compare (``confidence >= :threshold``), so a threshold on the grid splits
the bins where the filter splits the labels.
"""

from __future__ import annotations

import math

from sqlalchemy import Select, case, func, literal, select
from sqlalchemy.orm import Session

from service.models import LabelBin

GRID = 100  # per-class thresholds are multiples of 1/GRID, as in the authors' code


def grid_step(confidence: float) -> int:
    """The highest step with ``step / GRID <= confidence``: float comparisons, exactly as the SQL
    filter makes them."""
    step = math.floor(confidence * GRID)
    while (step + 1) / GRID <= confidence:
        step += 1
    while step / GRID > confidence:
        step -= 1
    return step


def grid_step_sql(column: str) -> str:
    """``grid_step`` in SQL: a first guess from ``column * GRID`` (PostgreSQL's cast rounds,
    SQLite's truncates), then the same one-step corrections, in doubles as the filter compares."""
    x = f"CAST({column} AS DOUBLE PRECISION)"
    guess = f"CAST({x} * {GRID} AS INTEGER)"
    up = f"CASE WHEN CAST({guess} + 1 AS DOUBLE PRECISION) / {GRID} <= {x} THEN 1 ELSE 0 END"
    down = f"CASE WHEN CAST({guess} AS DOUBLE PRECISION) / {GRID} > {x} THEN 1 ELSE 0 END"
    return f"{guess} + {up} - {down}"


def threshold_step(threshold: float) -> int | None:
    """The step whose bins and those above hold exactly the labels at or above ``threshold``:
    only a threshold on the grid has one (``confidence >= step / GRID`` is ``grid_step >= step``)."""
    step = grid_step(threshold)
    return step if step / GRID == threshold else None


def job_bins(session: Session, job_id: int, *, min_step: int = 0) -> list[tuple[int, int, int]]:
    """The job's non-empty bins at or above ``min_step``, as ``(predicted, step, count)``."""
    query = select(LabelBin.predicted, LabelBin.step, LabelBin.label_count).where(
        LabelBin.job_id == job_id, LabelBin.step >= min_step
    )
    return [tuple(row) for row in session.execute(query)]


def job_class_bins(*, job_id: int, steps_per_bin: int, bins: int, above_step: int | None) -> Select:
    """The job's bins merged ``steps_per_bin`` at a time (the last merged bin also takes every
    step above it), as ``(predicted, bin, count, count at or above above_step, confidence
    sum)``: a few rows a class, summed in SQL. ``above_step`` None counts nothing above. A query,
    so that a caller can read it in one statement with others (one snapshot)."""
    last = steps_per_bin * (bins - 1)
    merged = case((LabelBin.step >= last, bins - 1), else_=LabelBin.step // steps_per_bin)
    above = (
        literal(0)
        if above_step is None
        else case((LabelBin.step >= above_step, LabelBin.label_count), else_=0)
    )
    return (
        select(
            LabelBin.predicted,
            merged,
            func.sum(LabelBin.label_count),
            func.sum(above),
            func.sum(LabelBin.confidence_sum),
        )
        .where(LabelBin.job_id == job_id)
        .group_by(LabelBin.predicted, merged)
    )


def job_digest(session: Session, job_id: int) -> tuple[int, int, int]:
    """The job's label count, sum of item IDs and sum of predicted classes: exact integers."""
    count, item_sum, class_sum = session.execute(
        select(
            func.coalesce(func.sum(LabelBin.label_count), 0),
            func.coalesce(func.sum(LabelBin.item_id_sum), 0),
            func.coalesce(func.sum(LabelBin.predicted * LabelBin.label_count), 0),
        ).where(LabelBin.job_id == job_id)
    ).one()
    return int(count), int(item_sum), int(class_sum)
