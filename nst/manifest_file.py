"""Checks that a downloaded manifest is the one asked for, whole: the response's headers, the
Parquet footer and the rows agree on the manifest and the count, and the rows hash to the
``nst.targets.EntriesDigest`` the service published in the footer. The trainer checks while it
reads; ``nst manifests export`` checks before the file is put in place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nst import targets

BATCH_ROWS = 65_536  # at most, per record batch read
BATCH_TARGET_VALUES = 1 << 21  # and a few megabytes of soft targets (8 bytes a value)


class ManifestMismatch(ValueError):
    """What was downloaded is not the manifest (or the share of it) that was asked for."""


def announced(manifest_id: str, share: str, headers: dict, parquet: pq.ParquetFile) -> dict[str, str]:
    """The Parquet footer's metadata, once the response and the footer agree on which manifest
    this is and how many entries it holds, and the file holds that many rows."""
    footer = {key.decode(): value.decode() for key, value in (parquet.metadata.metadata or {}).items()}
    headers = {key.lower(): value for key, value in headers.items()}
    sent_for = [headers.get("x-manifest-id"), footer.get("nst.manifest_id")]
    if sent_for != [manifest_id, manifest_id]:
        raise ManifestMismatch(
            f"asked for manifest {manifest_id}, the service sent entries of {sent_for[0]} "
            f"(header) / {sent_for[1]} (Parquet metadata)"
        )
    announced_entries, streamed, rows = (
        headers.get("x-manifest-entries"),
        footer.get("nst.entries"),
        parquet.metadata.num_rows,
    )
    if announced_entries != streamed or streamed != str(rows):
        raise ManifestMismatch(
            f"manifest {manifest_id} ({share}): the service announced {announced_entries} entries and "
            f"streamed {streamed}, {rows} arrived; fetch it again"
        )
    return footer


def batch_rows(parquet: pq.ParquetFile) -> int:
    """Rows per record batch: memory holds one batch of targets, not the file's."""
    width = parquet.schema_arrow.field("target_indices").type.list_size
    return max(1, min(BATCH_ROWS, BATCH_TARGET_VALUES // max(1, width)))


def digest_columns(table: pa.Table) -> dict[str, np.ndarray | list[str]]:
    """The columns ``EntriesDigest.update`` reads, from a table of the manifest's entries."""
    return {name: column(table, name) for name in targets.DIGEST_COLUMNS}


def check_digest(manifest_id: str, share: str, digest: targets.EntriesDigest, footer: dict[str, str]) -> None:
    if digest.hexdigest() != footer.get("nst.sha256"):
        raise ManifestMismatch(
            f"manifest {manifest_id} ({share}): the entries that arrived hash to {digest.hexdigest()}, "
            f"the service published {footer.get('nst.sha256')}; fetch it again"
        )


def check_parquet(path: str | Path, manifest_id: str, headers: dict, share: str = "whole") -> None:
    """Raise ``ManifestMismatch`` unless the Parquet file at ``path`` is what the service
    published for ``manifest_id`` with these response headers; reads a batch at a time."""
    try:
        parquet = pq.ParquetFile(path)
    except pa.ArrowInvalid as error:
        raise ManifestMismatch(f"manifest {manifest_id} ({share}): not a Parquet file: {error}") from None
    with parquet:
        footer = announced(manifest_id, share, headers, parquet)
        digest = targets.EntriesDigest()
        for batch in parquet.iter_batches(
            batch_size=batch_rows(parquet), columns=list(targets.DIGEST_COLUMNS)
        ):
            digest.update(digest_columns(pa.Table.from_batches([batch])))
    check_digest(manifest_id, share, digest, footer)


def check_jsonl(path: str | Path, manifest_id: str, headers: dict) -> None:
    """Raise ``ManifestMismatch`` unless the JSONL file at ``path`` came for ``manifest_id`` and
    holds as many records as the service announced (JSONL carries no digest)."""
    headers = {key.lower(): value for key, value in headers.items()}
    if headers.get("x-manifest-id") != manifest_id:
        raise ManifestMismatch(
            f"asked for manifest {manifest_id}, the service sent entries of {headers.get('x-manifest-id')}"
        )
    records = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            records += chunk.count(b"\n")
    if str(records) != headers.get("x-manifest-entries"):
        raise ManifestMismatch(
            f"manifest {manifest_id}: the service announced {headers.get('x-manifest-entries')} entries, "
            f"{records} arrived; fetch it again"
        )


def column(table: pa.Table, name: str):
    """One column as ``EntriesDigest`` and the trainer's arrays take it: a list of str, a 2-D
    array for a fixed-width list, else a 1-D array."""
    array = table[name].combine_chunks()
    if pa.types.is_string(array.type):
        return array.to_pylist()
    if pa.types.is_fixed_size_list(array.type):
        return array.flatten().to_numpy().reshape(len(array), array.type.list_size)
    return array.to_numpy()
