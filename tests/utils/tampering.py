"""Downloads changed on the way, as ``tests.utils.transport.Change`` functions: what a reader
must notice and refuse."""

from __future__ import annotations

import io

import pyarrow.parquet as pq


def one_copies_value_changed(headers: dict, body: bytes) -> tuple[dict, bytes]:
    """A manifest's Parquet with one entry's ``copies`` plus one, the footer (count and digest)
    kept as the service wrote it."""
    parquet = pq.ParquetFile(io.BytesIO(body))
    table = parquet.read()
    copies = table["copies"].to_numpy().copy()
    copies[0] += 1
    table = table.set_column(table.column_names.index("copies"), "copies", [copies])
    out = io.BytesIO()
    with pq.ParquetWriter(out, table.schema) as writer:
        writer.write_table(table)
        writer.add_key_value_metadata({k.decode(): v.decode() for k, v in parquet.metadata.metadata.items()})
    return headers, out.getvalue()


def other_manifest(headers: dict, body: bytes) -> tuple[dict, bytes]:
    return {**headers, "x-manifest-id": "f" * 64}, body
