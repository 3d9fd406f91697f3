"""The worker host's cache, ``NST_DATA_DIR/cache``: checkpoints fetched from an object store
(``teachers/``) and converted graphs (``graphs/``), held under ``NST_WORKER_CACHE_GB``.

Each entry (a file or a folder) has a lock file beside it, held while a process reads or writes
the entry; a writer writes beside it (``.<entry>.<random>.part``) and renames when whole. After
each use the least recently used entries go, oldest first, until the cache fits: an entry
another process holds is passed over, so nothing is removed while in use, and the entry just
used stays even when it alone is larger than the budget. A part whose entry nobody holds is a
killed writer's, and goes whatever the budget. The lock files stay: a process may be waiting on
one, and a new file under the same name would let a second writer in beside it (they are empty).
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
            for part in _parts_of(entry):  # its writers hold this lock: these are dead ones'
                _remove(part)
            yield
            if entry.exists():
                os.utime(entry)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    trim(keep=entry)


def trim(keep: Path | None = None) -> list[Path]:
    """Remove killed writers' parts, then the least recently used entries until the cache holds
    at most ``NST_WORKER_CACHE_GB``; returns what went."""
    removed = []
    for part in _dead_parts():
        if _remove_unless_held(_entry_of(part), part):
            removed.append(part)
            logger.info("host cache: removed %s (left by a writer that did not finish)", part)
    budget = get_settings().worker_cache_gb * 1e9
    entries = sorted(_entries(), key=lambda e: e[1])
    total = sum(size for _, _, size in entries)
    for entry, _, size in entries:
        if total <= budget:
            break
        if entry == keep or not _remove_unless_held(entry, entry):
            continue
        total -= size
        removed.append(entry)
        logger.info("host cache: removed %s (%.1f MB, least recently used)", entry, size / 1e6)
    return removed


def _listed() -> Iterator[Path]:
    for kind in ("teachers", "graphs"):
        folder = root() / kind
        if folder.is_dir():
            yield from folder.iterdir()


def _dead_parts() -> list[Path]:
    """Candidates only: a part is a dead writer's when its entry's lock is free."""
    return [p for p in _listed() if p.name.startswith(".") and p.suffix == ".part"]


def _parts_of(entry: Path) -> list[Path]:
    return list(entry.parent.glob(f".{entry.name}.*.part"))


def _entry_of(part: Path) -> Path:
    # ".<entry>.<random>.part": atomic.replacing's and graph_cache's names for a file being written
    return part.with_name(part.name[1:].removesuffix(".part").rsplit(".", 1)[0])


def _entries() -> list[tuple[Path, float, int]]:
    """Every whole entry as (path, last use, bytes); parts (``.*.part``) and lock files are not
    entries."""
    found = []
    for entry in _listed():
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


def _remove_unless_held(entry: Path, path: Path) -> bool:
    """Remove ``path`` (``entry`` or one of its parts) unless a process holds ``entry``."""
    with open(_lock_path(entry), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            _remove(path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return True


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _lock_path(entry: Path) -> Path:
    # A folder's name has no suffix; a checkpoint's lock replaces its ".safetensors".
    return entry.with_suffix(".lock")
