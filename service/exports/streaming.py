"""Pages of records as a stream of JSONL or Parquet bytes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq


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


def jsonl(pages: Iterable[list[dict]], dumps: Callable[[dict], bytes]) -> Iterator[bytes]:
    """One chunk per page, one record per line."""
    for page in pages:
        yield b"".join(dumps(record) + b"\n" for record in page)


def parquet(
    tables: Iterable[pa.Table], schema: pa.Schema, footer: Callable[[], dict[str, str]] | None = None
) -> Iterator[bytes]:
    """One chunk per table (a row group each), then the footer, with ``footer()``'s key-value
    metadata added once every table is written (what only the end of the stream knows)."""
    sink = _Chunks()
    with pq.ParquetWriter(sink, schema) as writer:
        for table in tables:
            writer.write_table(table)
            yield sink.drain()
        if footer is not None:
            writer.add_key_value_metadata(footer())
    yield sink.drain()
