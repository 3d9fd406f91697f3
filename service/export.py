"""Stream a job's labels as JSONL or Parquet, a page at a time, in their own session (a
streaming response outlives the request's session)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from service.core.db import session_scope
from service.crud.jobs import decode_distribution, iter_labels

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


def _records(rows) -> Iterator[dict]:
    for label, uri in rows:
        probs, top = decode_distribution(label)
        yield {
            "item_id": label.item_id,
            "uri": uri,
            "predicted": label.predicted,
            "confidence": label.confidence,
            "entropy": label.entropy,
            "probs": probs,
            "top_indices": top,
            "rest_mass": label.rest_mass,
        }


def labels_jsonl(job_id: int) -> Iterator[bytes]:
    with session_scope() as session:
        for rows in iter_labels(session, job_id=job_id):
            yield "".join(json.dumps(r) + "\n" for r in _records(rows)).encode()


class _Chunks:
    """A write-only file that hands back what has been written since the last call."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.closed = False

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def drain(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def labels_parquet(job_id: int) -> Iterator[bytes]:
    sink = _Chunks()
    with session_scope() as session, pq.ParquetWriter(sink, LABEL_SCHEMA) as writer:
        for rows in iter_labels(session, job_id=job_id):
            writer.write_table(pa.Table.from_pylist(list(_records(rows)), schema=LABEL_SCHEMA))
            yield sink.drain()
    yield sink.drain()
