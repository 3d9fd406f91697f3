"""The worker host's cache, ``NST_DATA_DIR/cache``: checkpoints fetched from an object store
(``teachers/``) and converted graphs (``graphs/``), held under ``NST_WORKER_CACHE_GB``.

Each entry (a file or a folder) has a lock file beside it, held while a process reads or writes
the entry. After each use the least recently used entries go, oldest first, until the cache
fits: an entry another process holds is passed over, so nothing is removed while in use, and
the entry just used stays even when it alone is larger than the budget. The lock files stay: a
process may be waiting on one, and a new file under the same name would let a second writer in
beside it (they are empty).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nst.config import get_settings

logger = logging.getLogger(__name__)


def root() -> Path:
    return get_settings().data_dir / "cache"


@contextmanager
def held(entry: Path) -> Iterator[None]:
    """``entry`` locked against other processes (and the trimming) for the duration, then
    marked as just used and the cache trimmed around it."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    # flock: released by the kernel if the holder dies, so a killed process blocks nobody.
    with open(_lock_path(entry), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
            if entry.exists():
                os.utime(entry)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    trim(keep=entry)


def trim(keep: Path | None = None) -> list[Path]:
    """Remove the least recently used entries until the cache holds at most
    ``NST_WORKER_CACHE_GB``; returns what went."""
    budget = get_settings().worker_cache_gb * 1e9
    entries = sorted(_entries(), key=lambda e: e[1])
    total = sum(size for _, _, size in entries)
    removed = []
    for entry, _, size in entries:
        if total <= budget:
            break
        if entry == keep or not _remove_unless_held(entry):
            continue
        total -= size
        removed.append(entry)
        logger.info("host cache: removed %s (%.1f MB, least recently used)", entry, size / 1e6)
    return removed


def _entries() -> list[tuple[Path, float, int]]:
    """Every whole entry as (path, last use, bytes); half-written ones (``.*.part``, their
    writer's) and lock files are not entries."""
    found = []
    for kind in ("teachers", "graphs"):
        folder = root() / kind
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith(".") or entry.suffix == ".lock":
                continue
            try:
                found.append((entry, entry.stat().st_mtime, _size(entry)))
            except FileNotFoundError:  # removed meanwhile by another worker's trim
                continue
    return found


def _size(entry: Path) -> int:
    if entry.is_dir():
        return sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
    return entry.stat().st_size


def _remove_unless_held(entry: Path) -> bool:
    with open(_lock_path(entry), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return True


def _lock_path(entry: Path) -> Path:
    # A folder's name has no suffix; a checkpoint's lock replaces its ".safetensors".
    return entry.with_suffix(".lock")
