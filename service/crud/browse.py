"""Filtered, sorted pages of a job's labels and a manifest's entries, for looking at them:
by class and confidence range, by confidence or item order, with each item's true label where
its dataset has one. Data access only, no HTTP.

Pages are keyset-paged: the cursor is the sort key of the first row of the next page, so a page
costs the same at any depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from sqlalchemy import REAL, ColumnElement, and_, case, cast, func, literal, or_, select
from sqlalchemy.orm import Session

from service.models import Dataset, Item, Job, Label, Manifest, ManifestEntry, Teacher

Order = Literal["confidence_desc", "confidence_asc", "item"]
# Labeled manifest entries have no confidence; they sort below every pseudo label.
_NO_CONFIDENCE = -1.0


class CursorError(ValueError):
    """A cursor this module did not hand out."""


@dataclass
class Filters:
    class_index: int | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    correct: bool | None = None


@dataclass
class TileRow:
    item_id: int
    uri: str
    class_index: int
    confidence: float | None
    entropy: float | None
    top: list[tuple[int, float]]
    rest_mass: float | None
    true_class: int | None
    source: str | None = None
    copies: int | None = None
    job_id: int | None = None


# --- cursors ----------------------------------------------------------------------------------


def encode_cursor(order: Order, confidence: float | None, item_id: int) -> str:
    if order == "item":
        return str(item_id)
    return f"{confidence!r}:{item_id}"  # repr round-trips the stored value exactly


def _decode_cursor(order: Order, cursor: str) -> tuple[float | None, int]:
    try:
        if order == "item":
            confidence, item_id = None, int(cursor)
        else:
            text, item_id_text = cursor.split(":")
            confidence, item_id = float(text), int(item_id_text)
        # encode_cursor hands out stored confidences (REAL: finite float32) and row IDs (BIGINT):
        # anything else would reach the database as a value its column cannot take (a 500).
        valid = 0 <= item_id < 2**63 and (confidence is None or _is_float32(confidence))
    except ValueError:
        valid = False
    if not valid:
        raise CursorError(f"{cursor!r} is not a cursor of a {order!r} page")
    return confidence, item_id


def _is_float32(value: float) -> bool:
    with np.errstate(over="ignore", under="ignore"):
        single = np.float32(value)
    return bool(np.isfinite(single)) and (single != 0 or value == 0)


def _keyset(order: Order, key: ColumnElement, item_id: ColumnElement, cursor: str | None):
    """(where clause or None, order-by columns) for a page starting at ``cursor``."""
    if order == "item":
        columns = (item_id,)
    elif order == "confidence_desc":
        columns = (key.desc(), item_id)
    else:
        columns = (key, item_id)
    if cursor is None:
        return None, columns
    confidence, start = _decode_cursor(order, cursor)
    if order == "item":
        return item_id >= start, columns
    # Compared as float32, the stored type: PostgreSQL prints a REAL in its shortest form, which
    # read back as a double is not the stored value.
    at = cast(literal(confidence), REAL)
    beyond = key < at if order == "confidence_desc" else key > at
    return or_(beyond, and_(key == at, item_id >= start)), columns


# --- true labels ------------------------------------------------------------------------------


def class_mapping(source: list[str] | None, target: list[str]) -> dict[int, int] | None:
    """Dataset class index -> index in ``target`` for the names both share; None without classes."""
    if source is None:
        return None
    position = {name: i for i, name in enumerate(target)}
    return {i: position[name] for i, name in enumerate(source) if name in position}


def mapped_label(mapping: dict[int, int] | None, item_label: int | None) -> int | None:
    """An item's label as an index of the teacher's classes; None when unknown or not shared."""
    return mapping.get(item_label) if mapping and item_label is not None else None


def _truth_expression(mapping: dict[int, int] | None) -> ColumnElement:
    if mapping is None:
        return literal(None)
    if all(k == v for k, v in mapping.items()):
        return case((Item.label.in_(list(mapping)), Item.label), else_=None)
    return case(mapping, value=Item.label, else_=None)


def _truth_filter(truth: ColumnElement, predicted: ColumnElement, correct: bool) -> ColumnElement:
    if correct:
        return predicted == truth
    return and_(truth.is_not(None), predicted != truth)


# --- distributions ----------------------------------------------------------------------------


def top_classes(probs: bytes, top_indices: bytes | None, k: int) -> list[tuple[int, float]]:
    """The ``k`` most probable (class, probability) pairs of a stored distribution: float16
    probabilities of every class, or of the classes in ``top_indices`` (int32)."""
    p = np.frombuffer(probs, dtype=np.float16).astype(np.float32)
    classes = np.arange(len(p)) if top_indices is None else np.frombuffer(top_indices, dtype=np.int32)
    best = np.argsort(-p, kind="stable")[:k]
    return [(int(classes[i]), float(p[i])) for i in best]


def label_tile(label: Label, uri: str, true_class: int | None, top_k: int) -> TileRow:
    return TileRow(
        item_id=label.item_id,
        uri=uri,
        class_index=label.predicted,
        confidence=label.confidence,
        entropy=label.entropy,
        top=top_classes(label.probs, label.top_indices, top_k),
        rest_mass=label.rest_mass,
        true_class=true_class,
    )


def _confidence_range(column: ColumnElement, filters: Filters) -> list[ColumnElement]:
    bounds = []
    if filters.min_confidence is not None:
        bounds.append(column >= filters.min_confidence)
    if filters.max_confidence is not None:
        bounds.append(column <= filters.max_confidence)
    return bounds


# --- a job's labels ---------------------------------------------------------------------------


def job_classes(session: Session, *, job: Job) -> list[str]:
    return session.get(Teacher, job.teacher_id).class_names


def job_has_truth(session: Session, *, job: Job) -> bool:
    return session.get(Dataset, job.dataset_id).classes is not None


def label_tiles(
    session: Session,
    *,
    job: Job,
    filters: Filters,
    order: Order,
    cursor: str | None,
    limit: int,
    top_k: int,
) -> tuple[list[TileRow], str | None, int]:
    """A page of the job's labels that pass ``filters``, the next cursor, and how many pass."""
    dataset = session.get(Dataset, job.dataset_id)
    truth = _truth_expression(class_mapping(dataset.classes, job_classes(session, job=job)))
    conditions = [Label.job_id == job.id]
    if filters.class_index is not None:
        conditions.append(Label.predicted == filters.class_index)
    conditions += _confidence_range(Label.confidence, filters)
    if filters.correct is not None:
        conditions.append(_truth_filter(truth, Label.predicted, filters.correct))
    matching = select(Label.item_id).join(Item, Item.id == Label.item_id).where(*conditions)
    count = session.scalar(select(func.count()).select_from(matching.subquery())) or 0
    after, order_by = _keyset(order, Label.confidence, Label.item_id, cursor)
    if after is not None:
        conditions.append(after)
    query = (
        select(Label, Item.uri, truth.label("truth"))
        .join(Item, Item.id == Label.item_id)
        .where(*conditions)
        .order_by(*order_by)
        .limit(limit + 1)
    )
    rows = session.execute(query).all()
    tiles = [label_tile(label, uri, true_class, top_k) for label, uri, true_class in rows]
    return _cut(tiles, order, limit) + (count,)


def _cut(tiles: list[TileRow], order: Order, limit: int) -> tuple[list[TileRow], str | None]:
    if len(tiles) <= limit:
        return tiles, None
    first = tiles[limit]
    key = first.confidence if first.confidence is not None else _NO_CONFIDENCE
    return tiles[:limit], encode_cursor(order, key, first.item_id)


# --- a manifest's entries ---------------------------------------------------------------------


def entry_tiles(
    session: Session,
    *,
    manifest: Manifest,
    filters: Filters,
    source: str | None,
    order: Order,
    cursor: str | None,
    limit: int,
    top_k: int,
) -> tuple[list[TileRow], str | None, int]:
    """A page of the manifest's entries that pass the filters (a confidence bound keeps only
    pseudo-labeled entries, which alone have one), the next cursor, and how many pass."""
    key = func.coalesce(ManifestEntry.confidence, _NO_CONFIDENCE)
    conditions = [ManifestEntry.manifest_key == manifest.key]
    if filters.class_index is not None:
        conditions.append(ManifestEntry.target_class == filters.class_index)
    conditions += _confidence_range(ManifestEntry.confidence, filters)
    if source is not None:
        conditions.append(ManifestEntry.source == source)
    count = session.scalar(select(func.count()).where(*conditions)) or 0
    after, order_by = _keyset(order, key, ManifestEntry.item_id, cursor)
    if after is not None:
        conditions.append(after)
    query = (
        select(ManifestEntry, Item.uri, Item.label, Item.dataset_id, Label)
        .join(Item, Item.id == ManifestEntry.item_id)
        .outerjoin(Label, (Label.job_id == ManifestEntry.job_id) & (Label.item_id == ManifestEntry.item_id))
        .where(*conditions)
        .order_by(*order_by)
        .limit(limit + 1)
    )
    rows = session.execute(query).all()
    mappings: dict[int, dict[int, int] | None] = {}
    tiles = []
    for entry, uri, item_label, dataset_id, label in rows:
        if dataset_id not in mappings:
            classes = session.get(Dataset, dataset_id).classes
            mappings[dataset_id] = class_mapping(classes, manifest.classes)
        mapping = mappings[dataset_id]
        tiles.append(
            TileRow(
                item_id=entry.item_id,
                uri=uri,
                class_index=entry.target_class,
                confidence=entry.confidence,
                entropy=label.entropy if label else None,
                top=top_classes(label.probs, label.top_indices, top_k) if label else [],
                rest_mass=label.rest_mass if label else None,
                true_class=mapped_label(mapping, item_label),
                source=entry.source,
                copies=entry.copies,
                job_id=entry.job_id,
            )
        )
    return _cut(tiles, order, limit) + (count,)
