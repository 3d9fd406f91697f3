"""A job's labels as JSONL or Parquet."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa

from service.core.db import session_scope
from service.crud.jobs import decode_distribution, labels_page
from service.exports import streaming
from service.pagination import all_pages

PAGE_SIZE = 5000

LABEL_SCHEMA = pa.schema(
    [
        ("item_id", pa.int64()),
        ("uri", pa.string()),
        ("predicted", pa.int32()),
        ("confidence", pa.float32()),
        ("entropy", pa.float32()),
        ("probs", pa.list_(pa.float32())),
        ("top_indices", pa.list_(pa.int32())),
        ("rest_mass", pa.float32()),
    ]
)


def _records(rows) -> list[dict]:
    records = []
    for label, uri in rows:
        probs, top = decode_distribution(label)
        records.append(
            {
                "item_id": label.item_id,
                "uri": uri,
                "predicted": label.predicted,
                "confidence": label.confidence,
                "entropy": label.entropy,
                "probs": probs,
                "top_indices": top,
                "rest_mass": label.rest_mass,
            }
        )
    return records


def _pages(job_id: int) -> Iterator[list[dict]]:
    with session_scope() as session:

        def fetch(cursor: int | None):
            return labels_page(session, job_id=job_id, cursor=cursor, limit=PAGE_SIZE)

        for rows in all_pages(fetch):
            yield _records(rows)


def labels_jsonl(job_id: int) -> Iterator[bytes]:
    return streaming.jsonl(_pages(job_id), lambda record: json.dumps(record).encode())


def labels_parquet(job_id: int) -> Iterator[bytes]:
    tables = (pa.Table.from_pylist(page, schema=LABEL_SCHEMA) for page in _pages(job_id))
    return streaming.parquet(tables, LABEL_SCHEMA)
