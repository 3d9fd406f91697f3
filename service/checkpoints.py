"""Teacher checkpoint files: safetensors only, stored under their sha256, never unpickled.

The API process reads the safetensors header itself (8-byte length, then JSON) so that it never
needs torch; workers load the tensors later with ``safetensors.torch``. The store is a folder or
a URL prefix (``NST_ARTIFACT_DIR=s3://…``, through ``nst.storage``).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nst import storage
from nst.storage import Location

PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".tar"})
MAX_HEADER_BYTES = 100 * 1024 * 1024
CONVERT_HINT = (
    "nothing is ever unpickled here; convert it to safetensors with "
    "`nst teachers convert STATE_DICT.pt --arch ARCH --classes ... --out teacher.safetensors` "
    "(it loads the state dict with torch.load(weights_only=True))"
)


class CheckpointError(ValueError):
    """The file is not a usable safetensors checkpoint; the message says why."""


SNIFF_BYTES = 9  # a safetensors file: an 8-byte header length, then a JSON object


def refuse_pickle(name: str, head: bytes) -> None:
    """Refuse by name, or by the first SNIFF_BYTES bytes when they are not a safetensors start.

    The header's first byte alone cannot tell: a safetensors header whose length is 128 modulo
    256 also starts with 0x80 (pickle's PROTO opcode). The JSON object's opening brace, which
    the format requires right after the length, can: no pickle or zip starts that way.
    """
    pickled = head[8:9] != b"{" and (head[:1] == b"\x80" or head[:4] == b"PK\x03\x04")
    if Path(name).suffix.lower() in PICKLE_SUFFIXES or pickled:
        raise CheckpointError(f"{name!r} looks like a pickle or PyTorch file: {CONVERT_HINT}")


def read_header(path: Path, *, name: str | None = None) -> dict[str, Any]:
    """Parse and check a safetensors header; raise ``CheckpointError``, naming the file as
    ``name`` (an upload's own name rather than its temporary file's), when it is not one."""
    name = name or path.name
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
        refuse_pickle(name, head)
        if len(head) < SNIFF_BYTES:
            raise CheckpointError(f"{name!r} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", head[:8])
        handle.seek(8)
        if length == 0 or length > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(f"{name!r} is not a safetensors file (bad header length)")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{name!r} is not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{name!r} is not a safetensors file (header is not an object)")
    data_size = size - 8 - length
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not tensors:
        raise CheckpointError(f"{name!r} holds no tensors")
    for key, info in tensors.items():
        try:
            start, end = info["data_offsets"]
            info["dtype"], info["shape"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{name!r}: tensor {key!r} has a malformed entry") from None
        if not 0 <= start <= end <= data_size:
            raise CheckpointError(f"{name!r}: tensor {key!r} lies outside the file")
    return header


def embedded_metadata(header: dict[str, Any]) -> dict[str, Any] | None:
    """The teacher metadata that ``nst teachers convert`` writes under ``__metadata__['nst']``."""
    raw = (header.get("__metadata__") or {}).get("nst")
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError("the file's embedded 'nst' metadata is not JSON") from None


@dataclass
class Received:
    """An upload whose header checked out, held in a local file until it is put into the store."""

    sha: str
    size: int
    header: dict
    file: Path


def _part_file(store_dir: Location) -> tuple[Path, IO[bytes]]:
    """A new temporary file for an upload, and its handle. For a local store, beside its files (a
    rename moves it in) and not from mkstemp, whose 0600 would hide the checkpoint from workers
    under another user: it gets the umask's mode, as any new file does. For an object store, a
    private one in the system's temporary folder."""
    if isinstance(store_dir, Path):
        store_dir.mkdir(parents=True, exist_ok=True)
        tmp = store_dir / f".upload-{uuid.uuid4().hex}.part"
        return tmp, tmp.open("xb")
    fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".part")
    return Path(name), os.fdopen(fd, "wb")


@contextmanager
def received(chunks: Iterable[bytes], *, name: str, store_dir: Location) -> Iterator[Received]:
    """Write ``chunks`` to a local temporary file and check them; the file is removed on leaving,
    so a refused, failed or interrupted upload leaves nothing behind (``put`` moves it first)."""
    tmp, out = _part_file(store_dir)
    digest = hashlib.sha256()
    size = 0
    head = b""  # the first SNIFF_BYTES bytes, sniffed before the rest of a large file is written
    try:
        with out:
            for chunk in chunks:
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                    if len(head) == SNIFF_BYTES:
                        refuse_pickle(name, head)
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        if size == 0:
            raise CheckpointError(f"{name!r} is empty")
        if len(head) < SNIFF_BYTES:  # too short for a safetensors file; named as uploaded
            refuse_pickle(name, head)
            raise CheckpointError(f"{name!r} is too short to be a safetensors file")
        yield Received(digest.hexdigest(), size, read_header(tmp, name=name), tmp)
    finally:
        tmp.unlink(missing_ok=True)


def put(upload: Received, store_dir: Location) -> Location:
    """Move a received upload into the store under its sha256; an object store shows it only
    once it is whole."""
    final = storage.join(store_dir, f"{upload.sha}.safetensors")
    storage.write_file(upload.file, final)
    return final


def store(chunks: Iterable[bytes], *, name: str, store_dir: Location) -> tuple[str, Location, int, dict]:
    """Receive ``chunks`` and put them into the store; return (sha, location, size, header)."""
    with received(chunks, name=name, store_dir=store_dir) as upload:
        return upload.sha, put(upload, store_dir), upload.size, upload.header


def file_chunks(path: Location, chunk_size: int = 1 << 20) -> Iterable[bytes]:
    return storage.chunks(path, chunk_size)
