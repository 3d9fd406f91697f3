"""Files written whole or not at all: a reader, or a run that crashed while writing, finds the
previous file or the new one, never part of one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new file at: flushed to disk and renamed
    over ``path`` once the block ends, removed (``path`` left as it was) if it raises. A
    symbolic link's target is replaced; a pipe or device (``/dev/stdout``) is written directly,
    as it cannot be."""
    target = Path(os.path.realpath(path))
    check_folder(path)
    if target.exists() and not target.is_file():
        yield target
        return
    # Not mkstemp: its files are private (0600); this one gets the umask's mode, as ``path`` would.
    part = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    try:
        yield part
        _fsync(part)
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)  # the rename itself survives a power cut


def check_folder(path: str | Path) -> None:
    """Refuse a ``path`` whose folder does not exist, naming it: called before the work whose
    result it will hold."""
    folder = Path(os.path.realpath(path)).parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: folder {str(folder)!r} does not exist")


def write_bytes(path: str | Path, data: bytes) -> Path:
    with replacing(path) as part, part.open("wb") as handle:
        handle.write(data)
    return Path(path)


def _fsync(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":  # a folder cannot be opened for fsync elsewhere
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
