"""A manifest's entries as records, JSONL or Parquet. Soft targets are computed here from the
job's stored distribution, with the manifest's temperature, a page at a time: sparse (the kept
classes and the rest mass, ``nst.targets``) in Parquet, rebuilt dense from that for JSON."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pydantic_core import to_json
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nst import targets
from service.core.db import session_scope
from service.exports import streaming
from service.manifests.reads import entries_page
from service.models import Item, Job, Label, Manifest, ManifestEntry, ManifestInput
from service.pagination import all_pages, cut, from_cursor

PAGE_SIZE = 5000
PARQUET_PAGE_ROWS = 65_536
# A JSON record of a soft target spells out every class, so record pages hold about this many
# target values at most: a page of 5,000 at 1,000 classes was 115 MB of JSON.
PAGE_TARGET_VALUES = 250_000


def record_page_size(manifest: Manifest, limit: int = PAGE_SIZE) -> int:
    """At most ``limit`` records a page, fewer for soft targets over many classes."""
    if not manifest.params.get("soft"):
        return limit
    return max(1, min(limit, PAGE_TARGET_VALUES // len(manifest.classes)))


@dataclass(frozen=True)
class Part:
    """One of ``parts`` disjoint shares of the entries that together cover them (item ID modulo
    ``parts``): what one of ``parts`` data-parallel trainers reads."""

    index: int = 0
    parts: int = 1


def width(session: Session, manifest: Manifest) -> int:
    """The fixed width of the Parquet target columns: the most classes any entry keeps (every
    class for a job that stores whole distributions, else its top-k; one for hard targets)."""
    if not manifest.params.get("soft"):
        return 1
    jobs = session.scalars(
        select(Job)
        .join(ManifestInput, ManifestInput.job_id == Job.id)
        .where(ManifestInput.manifest_key == manifest.key)
    )
    return max([job.num_classes if job.stores_full_distribution else job.top_k for job in jobs], default=1)


def sparse_targets(rows: list[tuple], *, soft: bool, num_classes: int, temperature: float, width: int):
    """``(indices [n, width] int32, values [n, width] float32, rest [n] float32)`` for rows of
    ``(source, target_class, probs, top_indices, rest_mass)``. A soft target is ``p^(1/T)``
    renormalised, as the authors' code does; a top-k label's rest mass is spread evenly over the
    classes it did not keep before sharpening. Hard targets keep their one class at 1."""
    n = len(rows)
    indices = np.full((n, width), targets.PAD, dtype=np.int32)
    values = np.zeros((n, width), dtype=np.float32)
    rest = np.zeros(n, dtype=np.float32)
    groups: dict[tuple[int, bool], list[int]] = defaultdict(list)
    for i, (source, target_class, probs, top, _rest) in enumerate(rows):
        if soft and source == "pseudo":
            groups[(len(probs) // 2, top is None)].append(i)
        else:
            indices[i, 0], values[i, 0] = target_class, 1.0
    for (k, whole), members in groups.items():
        stored = np.frombuffer(b"".join(rows[i][2] for i in members), dtype=np.float16)
        stored = stored.reshape(-1, k).astype(np.float64)
        if whole:
            kept, others, each = np.arange(k, dtype=np.int32), 0, np.zeros(len(members))
        else:
            kept = np.frombuffer(b"".join(rows[i][3] for i in members), dtype=np.int32).reshape(-1, k)
            others = num_classes - k
            masses = np.maximum([rows[i][4] or 0.0 for i in members], 0.0)
            each = masses / others if others else np.zeros(len(members))
        # p^(1/T) in log space, scaled by the row's largest: a small T would underflow every
        # power to 0 (and 0/0) for a label whose top probability is well below 1.
        with np.errstate(divide="ignore"):
            log_kept, log_each = np.log(stored) / temperature, np.log(each) / temperature
        largest = np.maximum(log_kept.max(axis=1), log_each if others else -np.inf)
        sharpened = np.exp(log_kept - largest[:, None])
        sharpened_each = np.exp(log_each - largest)
        total = sharpened.sum(axis=1) + others * sharpened_each
        indices[members, :k] = kept
        values[members, :k] = sharpened / total[:, None]
        rest[members] = others * sharpened_each / total
    return indices, values, rest


def _float32(value: float | None) -> float | None:
    """A REAL as its shortest float32 decimal: PostgreSQL and SQLite hand it back differently."""
    return None if value is None else float(str(np.float32(value)))


def records(rows, manifest: Manifest) -> list[dict]:
    """Entry dicts for a page of ``entries_page`` rows, with the class name of ``target_class``."""
    soft = bool(manifest.params.get("soft"))
    dense: dict[int, list[float]] = {}
    pseudo = [i for i, row in enumerate(rows) if soft and row[0].source == "pseudo"]
    if pseudo:
        num_classes = len(manifest.classes)
        stored = [(rows[i][0].source, rows[i][0].target_class, *rows[i][2:5]) for i in pseudo]
        width = max(len(s[2]) // 2 for s in stored)
        sparse = sparse_targets(
            stored,
            soft=True,
            num_classes=num_classes,
            temperature=manifest.params["temperature"],
            width=width,
        )
        dense = dict(zip(pseudo, targets.dense(*sparse, num_classes).tolist(), strict=True))
    return [
        {
            "item_id": row[0].item_id,
            "uri": row[1],
            "source": row[0].source,
            "target": dense.get(i, row[0].target_class),
            "class_name": manifest.classes[row[0].target_class],
            "copies": row[0].copies,
            "confidence": _float32(row[0].confidence),
        }
        for i, row in enumerate(rows)
    ]


def _pages(manifest_key: int) -> Iterator[list[dict]]:
    """Record pages, each read in a session of its own: a slow reader holds no database
    connection while it reads (the cursor, an item ID, is all a page needs of the last)."""

    def fetch(cursor: int | None) -> tuple[list[dict], int | None]:
        with session_scope() as session:
            manifest = session.get(Manifest, manifest_key)
            limit = record_page_size(manifest)
            rows, next_cursor = entries_page(session, manifest=manifest, cursor=cursor, limit=limit)
            return records(rows, manifest), next_cursor

    yield from all_pages(fetch)


def entries_jsonl(manifest_key: int) -> Iterator[bytes]:
    # pydantic-core writes a thousand-class soft target ten times faster than json.dumps.
    return streaming.jsonl(_pages(manifest_key), to_json)


def entry_schema(width: int, *, manifest_id: str, classes: list[str]) -> pa.Schema:
    return pa.schema(
        [
            ("item_id", pa.int64()),
            ("uri", pa.string()),
            ("source", pa.string()),
            ("target_class", pa.int32()),  # the class a hard target is, the top one of a soft one
            ("class_name", pa.dictionary(pa.int32(), pa.string())),
            ("copies", pa.int32()),
            ("confidence", pa.float32()),  # null for labeled entries
            ("target_indices", pa.list_(pa.int32(), width)),
            ("target_values", pa.list_(pa.float32(), width)),
            ("target_rest", pa.float32()),
        ],
        metadata={"nst.manifest_id": manifest_id, "nst.classes": json.dumps(classes)},
    )


def _part_query(manifest: Manifest, part: Part):
    query = select(ManifestEntry).where(ManifestEntry.manifest_key == manifest.key)
    if part.parts > 1:
        query = query.where(ManifestEntry.item_id % part.parts == part.index)
    return query


def count(session: Session, manifest: Manifest, part: Part) -> int:
    """The entries in ``part``, counted apart from the stream that sends them."""
    return session.scalar(select(func.count()).select_from(_part_query(manifest, part).subquery())) or 0


def parquet_page_size(manifest: Manifest, width: int) -> int:
    """Rows a Parquet page (and row group) holds: up to ``PARQUET_PAGE_ROWS``, fewer where each
    row carries many target values, so that a page stays a few megabytes."""
    per_row = width if manifest.params.get("soft") else 1
    return max(1, min(PARQUET_PAGE_ROWS, PAGE_TARGET_VALUES * 4 // per_row))


def _column_pages(manifest: Manifest, part: Part, page_size: int) -> Iterator[list]:
    """Pages of plain rows (plain columns cost Python a fraction of ORM objects), each read
    whole in a session of its own: a download holds a database connection only while a page is
    read, never while the client takes it, so any number of slow readers (the ranks of a large
    trainer) share the pool with the rest of the API. Each page is cut from the share's entries
    by their key before the join, as ``entries_page`` does."""
    cursor: int | None = None
    while True:
        with session_scope() as session:
            share = from_cursor(
                _part_query(manifest, part), key=ManifestEntry.item_id, cursor=cursor, limit=page_size
            ).subquery()
            query = select(
                share.c.item_id,
                Item.uri,
                share.c.source,
                share.c.target_class,
                share.c.copies,
                share.c.confidence,
            ).join(Item, Item.id == share.c.item_id)
            if manifest.params.get("soft"):
                query = query.add_columns(Label.probs, Label.top_indices, Label.rest_mass).outerjoin(
                    Label, (Label.job_id == share.c.job_id) & (Label.item_id == share.c.item_id)
                )
            rows, cursor = cut(
                session.execute(query.order_by(share.c.item_id)).all(), limit=page_size, key=_item_id
            )
        if rows:
            yield rows
        if cursor is None:
            return


def _item_id(row) -> int:
    return row[0]


def _columns(rows, manifest: Manifest, width: int) -> dict:
    item_id, uri, source, target_class, copies, confidence, *_ = zip(*rows, strict=True)
    indices, values, rest = sparse_targets(
        [(r[2], r[3], *(tuple(r[6:9]) or (None, None, None))) for r in rows],
        soft=bool(manifest.params.get("soft")),
        num_classes=len(manifest.classes),
        temperature=manifest.params.get("temperature", 1.0),
        width=width,
    )
    return {
        "item_id": np.array(item_id, dtype=np.int64),
        "uri": list(uri),
        "source": list(source),
        "target_class": np.array(target_class, dtype=np.int32),
        "copies": np.array(copies, dtype=np.int32),
        "confidence": np.array(confidence, dtype=np.float32),  # None (labeled) becomes NaN, then null
        "target_indices": indices,
        "target_values": values,
        "target_rest": rest,
    }


def _table(columns: dict, schema: pa.Schema, width: int, classes: pa.Array) -> pa.Table:
    arrays = []
    for field in schema:
        column = columns.get(field.name)
        if field.name == "class_name":
            arrays.append(pa.DictionaryArray.from_arrays(pa.array(columns["target_class"]), classes))
        elif field.name == "confidence":
            arrays.append(pa.array(column, type=field.type, from_pandas=True))  # NaN -> null
        elif pa.types.is_fixed_size_list(field.type):
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(column.ravel()), width))
        else:
            arrays.append(pa.array(column, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def entries_parquet(manifest_key: int, part: Part = Part()) -> Iterator[bytes]:
    """Row groups of up to ``parquet_page_size`` entries in item order; the footer's metadata
    adds the count and ``nst.targets.EntriesDigest`` of what was streamed, for the reader to
    check. The manifest is read once here and its entries a page per session: an entry never
    changes once written, so pages read in separate transactions make one consistent whole."""
    with session_scope() as session:
        manifest = session.get(Manifest, manifest_key)
        k = width(session, manifest)
        session.expunge(manifest)
    schema = entry_schema(k, manifest_id=manifest.id, classes=manifest.classes)
    digest = targets.EntriesDigest()
    classes = pa.array(manifest.classes, type=pa.string())

    def tables() -> Iterator[pa.Table]:
        for rows in _column_pages(manifest, part, parquet_page_size(manifest, k)):
            columns = _columns(rows, manifest, k)
            digest.update(columns)
            yield _table(columns, schema, k, classes)

    def footer() -> dict[str, str]:
        return {"nst.entries": str(digest.count), "nst.sha256": digest.hexdigest()}

    yield from streaming.parquet(tables(), schema, footer=footer)
