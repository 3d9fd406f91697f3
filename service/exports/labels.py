"""A job's labels as JSONL or Parquet, each with its class names beside the indices."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa
from sqlalchemy import select

from service.core.db import session_scope
from service.crud.jobs import decode_distribution, labels_page
from service.exports import streaming
from service.models import Job, Teacher
from service.pagination import all_pages

PAGE_SIZE = 5000

LABEL_SCHEMA = pa.schema(
    [
        ("item_id", pa.int64()),
        ("uri", pa.string()),
        ("predicted", pa.int32()),
        ("predicted_class", pa.string()),
        ("confidence", pa.float32()),
        ("entropy", pa.float32()),
        ("probs", pa.list_(pa.float32())),
        ("top_indices", pa.list_(pa.int32())),
        ("top_classes", pa.list_(pa.string())),  # null with the whole distribution (in class order)
        ("rest_mass", pa.float32()),
    ]
)


def _records(rows, classes: list[str]) -> list[dict]:
    records = []
    for label, uri in rows:
        probs, top = decode_distribution(label)
        records.append(
            {
                "item_id": label.item_id,
                "uri": uri,
                "predicted": label.predicted,
                "predicted_class": classes[label.predicted],
                "confidence": label.confidence,
                "entropy": label.entropy,
                "probs": probs,
                "top_indices": top,
                "top_classes": None if top is None else [classes[i] for i in top],
                "rest_mass": label.rest_mass,
            }
        )
    return records


def _pages(job_id: int) -> Iterator[list[dict]]:
    """Record pages, each read in a session of its own: a slow reader holds no database
    connection while it reads."""
    with session_scope() as session:
        classes = _classes(session, job_id)

    def fetch(cursor: int | None) -> tuple[list[dict], int | None]:
        with session_scope() as session:
            rows, next_cursor = labels_page(session, job_id=job_id, cursor=cursor, limit=PAGE_SIZE)
            return _records(rows, classes), next_cursor

    yield from all_pages(fetch)


def _classes(session, job_id: int) -> list[str]:
    return session.scalar(
        select(Teacher.class_names).join(Job, Job.teacher_id == Teacher.id).where(Job.id == job_id)
    )


def labels_jsonl(job_id: int) -> Iterator[bytes]:
    return streaming.jsonl(_pages(job_id), lambda record: json.dumps(record).encode())


def labels_parquet(job_id: int) -> Iterator[bytes]:
    with session_scope() as session:
        schema = LABEL_SCHEMA.with_metadata({"nst.classes": json.dumps(_classes(session, job_id))})
    tables = (pa.Table.from_pylist(page, schema=schema) for page in _pages(job_id))
    return streaming.parquet(tables, schema)
