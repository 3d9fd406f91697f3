"""Converted teacher graphs kept on the worker host's disk (``NST_DATA_DIR/cache/graphs``), so
a teacher is converted once per host, not once per worker process, restart or job: a second
process prepared a resnet18 teacher for OpenVINO in 0.39 s instead of 2.98 s (bench.label_profile,
docs/BENCHMARKS.md).

A graph's folder is named by everything it is made from (the teacher's content, how it is
built, the input and batch shape, the versions of the libraries that convert it), so a changed
file or an upgrade gets a new folder rather than a stale graph. One process converts while
holding the entry's lock (``workers.host_cache``, which also keeps the cache under its
budget); the others wait and then read what it wrote. A folder appears whole or not at all
(written beside it, then renamed), and one that cannot be read is made again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TypeVar

from workers import host_cache

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A graph depends on how these libraries trace, convert and build the model.
_LIBRARIES = ("torch", "timm", "openvino")


def folder_for(*parts) -> Path:
    """Where the graph made from ``parts`` (JSON-able: what identifies the model and its input)
    lives, named by their digest and the converting libraries' versions."""
    named = json.dumps([list(parts), [_version(name) for name in _LIBRARIES]], default=list)
    return host_cache.root() / "graphs" / hashlib.sha256(named.encode()).hexdigest()


def cached(folder: Path, write: Callable[[Path], None], read: Callable[[Path], T]) -> T:
    """``read(folder)``, after ``write`` has filled it if no process on this host has yet.
    ``write`` gets an empty folder of its own; it becomes ``folder`` only once it returned."""
    with host_cache.held(folder):
        if folder.is_dir():
            try:
                return read(folder)
            except Exception as exc:  # a damaged graph is made again, not a reason to fail
                logger.warning(
                    "cached graph %s could not be read (%s: %s); converting again",
                    folder.name,
                    type(exc).__name__,
                    str(exc)[:300],
                )
                shutil.rmtree(folder, ignore_errors=True)
        part = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.part")
        part.mkdir()
        try:
            write(part)
            for file in part.iterdir():
                with file.open("rb") as handle:
                    os.fsync(handle.fileno())
            os.rename(part, folder)
        except BaseException:
            shutil.rmtree(part, ignore_errors=True)
            raise
        return read(folder)


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"
