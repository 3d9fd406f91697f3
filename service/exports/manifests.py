"""A manifest's entries as records, JSONL or Parquet. Soft targets are computed here from the
job's stored distribution, with the manifest's temperature, a page at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
from pydantic_core import to_json

from service.core.db import session_scope
from service.exports import streaming
from service.manifests.reads import entries_page
from service.models import Manifest
from service.pagination import all_pages

PAGE_SIZE = 5000

ENTRY_SCHEMA = pa.schema(
    [
        ("item_id", pa.int64()),
        ("uri", pa.string()),
        ("source", pa.string()),
        ("target_class", pa.int32()),  # labeled entries and hard pseudo targets, else null
        ("target_probs", pa.list_(pa.float32())),  # soft pseudo targets, else null
        ("copies", pa.int32()),
        ("confidence", pa.float32()),  # null for labeled entries
    ]
)


def full_distribution(probs: bytes, top_indices: bytes | None, rest_mass: float | None, num_classes: int):
    """The stored float16 distribution over all classes. A top-k label spreads its rest mass
    evenly over the classes it did not keep."""
    stored = np.frombuffer(probs, dtype=np.float16).astype(np.float64)
    if top_indices is None:
        return stored
    others = num_classes - len(stored)
    full = np.full(num_classes, max(rest_mass or 0.0, 0.0) / others if others else 0.0)
    full[np.frombuffer(top_indices, dtype=np.int32)] = stored
    return full


def soft_targets(distributions: Sequence[np.ndarray], temperature: float) -> np.ndarray:
    """``p^(1/T)`` renormalised, as the authors' code does; float16 storage is renormalised too."""
    sharpened = np.stack(distributions) ** (1.0 / temperature)
    return (sharpened / sharpened.sum(axis=1, keepdims=True)).astype(np.float32)


def _float32(value: float | None) -> float | None:
    """A REAL as its shortest float32 decimal: PostgreSQL and SQLite hand it back differently."""
    return None if value is None else float(str(np.float32(value)))


def records(rows, manifest: Manifest) -> list[dict]:
    """Entry dicts for a page of ``entries_page`` rows."""
    soft = bool(manifest.params.get("soft"))
    pseudo = [i for i, row in enumerate(rows) if soft and row[0].source == "pseudo"]
    targets: dict[int, list[float]] = {}
    if pseudo:
        distributions = [full_distribution(*rows[i][2:5], len(manifest.classes)) for i in pseudo]
        matrix = soft_targets(distributions, manifest.params["temperature"])
        targets = dict(zip(pseudo, matrix.tolist(), strict=True))
    return [
        {
            "item_id": row[0].item_id,
            "uri": row[1],
            "source": row[0].source,
            "target": targets.get(i, row[0].target_class),
            "copies": row[0].copies,
            "confidence": _float32(row[0].confidence),
        }
        for i, row in enumerate(rows)
    ]


def _pages(manifest_key: int) -> Iterator[list[dict]]:
    with session_scope() as session:
        manifest = session.get(Manifest, manifest_key)

        def fetch(cursor: int | None):
            return entries_page(session, manifest=manifest, cursor=cursor, limit=PAGE_SIZE)

        for rows in all_pages(fetch):
            yield records(rows, manifest)


def entries_jsonl(manifest_key: int) -> Iterator[bytes]:
    # pydantic-core writes a thousand-class soft target ten times faster than json.dumps.
    return streaming.jsonl(_pages(manifest_key), to_json)


def _columns(page: list[dict]) -> dict[str, list]:
    columns = {name: [r[name] for r in page] for name in ("item_id", "uri", "source", "copies", "confidence")}
    columns["target_class"] = [r["target"] if isinstance(r["target"], int) else None for r in page]
    columns["target_probs"] = [r["target"] if isinstance(r["target"], list) else None for r in page]
    return columns


def entries_parquet(manifest_key: int) -> Iterator[bytes]:
    tables = (pa.Table.from_pydict(_columns(page), schema=ENTRY_SCHEMA) for page in _pages(manifest_key))
    return streaming.parquet(tables, ENTRY_SCHEMA)
