"""Sparse soft targets, as a manifest's Parquet entries carry them, and the digest that checks
them: written once here for the service (which writes them, and builds its JSON targets from
them) and the trainer (which reads them), so both rebuild the same float32 values.

A target is ``indices`` and ``values`` (fixed width, padded with index -1 and value 0) and
``rest``: the mass spread evenly over every class not in ``indices``.
"""

from __future__ import annotations

import hashlib

import numpy as np

PAD = -1
# Softmax temperatures the service takes (a job's labeling, a manifest's sharpening, a teacher's
# calibration). Below 0.01, logits / T and p^(1/T) leave float32's range for real teachers, and
# PostgreSQL's REAL column refuses what float32 cannot hold.
TEMPERATURE_MIN = 0.01
TEMPERATURE_MAX = 100.0
# What the digest covers, in this order: the Parquet columns a trainer reads.
DIGEST_COLUMNS = (
    "item_id",
    "uri",
    "source",
    "target_class",
    "copies",
    "target_indices",
    "target_values",
    "target_rest",
)


def dense(indices: np.ndarray, values: np.ndarray, rest: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 ``[n, num_classes]`` from ``[n, k]`` indices and values and ``[n]`` rest masses."""
    indices, values = np.atleast_2d(indices), np.atleast_2d(values)
    rest = np.atleast_1d(np.asarray(rest, dtype=np.float32))
    kept = indices != PAD
    others = (num_classes - kept.sum(axis=1)).astype(np.float32)
    each = np.divide(rest, others, out=np.zeros_like(rest), where=others > 0)
    out = np.repeat(each[:, None], num_classes, axis=1)
    rows = np.broadcast_to(np.arange(len(indices))[:, None], indices.shape)
    out[rows[kept], indices[kept]] = values[kept]
    return out


class EntriesDigest:
    """sha256 over the entries' columns, the same however the rows are split into pages: one
    hash per column fed page by page, then a hash of those. A string column feeds its UTF-8
    lengths and its bytes."""

    def __init__(self) -> None:
        self._hashes = {name: hashlib.sha256() for name in DIGEST_COLUMNS}
        self._lengths = {name: hashlib.sha256() for name in ("uri", "source")}
        self.count = 0

    def update(self, columns: dict[str, np.ndarray | list[str]]) -> None:
        """A page: numpy arrays in the Parquet types, ``uri`` and ``source`` as lists of str."""
        for name in DIGEST_COLUMNS:
            column = columns[name]
            if name in self._lengths:
                encoded = [value.encode() for value in column]
                self._lengths[name].update(np.array([len(e) for e in encoded], dtype="<i4").tobytes())
                self._hashes[name].update(b"".join(encoded))
            else:
                little = np.ascontiguousarray(column, dtype=column.dtype.newbyteorder("<"))
                self._hashes[name].update(little.tobytes())
        self.count += len(columns["item_id"])

    def hexdigest(self) -> str:
        total = hashlib.sha256(str(self.count).encode())
        for part in [*self._hashes.values(), *self._lengths.values()]:
            total.update(part.digest())
        return total.hexdigest()
