"""How a worker host's cores are shared among the worker's pool processes.

Each pool process runs a teacher with torch's threads and feeds it from decode processes. Left
alone, every pool process of ``nst worker --concurrency N`` would take torch's default thread
count (the host's cores) and the same fixed number of decode processes: N times the cores on a
CPU host, and a GPU fed by two decode processes however many cores stand beside it. Instead
each pool process takes its share of the cores for each.
"""

from __future__ import annotations

import os

# Set in the worker's main process when the worker starts (``note_pool_processes``, from the
# ``worker_init`` signal); the pool processes are forked after it and inherit it.
_pool_processes = 1


def note_pool_processes(count: object) -> None:
    """The worker's ``--concurrency``; anything but a positive count (Celery's ``auto``,
    resolved later) leaves one, so each process keeps the whole host as before."""
    global _pool_processes
    _pool_processes = count if isinstance(count, int) and count > 0 else 1


def pool_processes() -> int:
    return _pool_processes


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def share(total: int, processes: int | None = None) -> int:
    """One pool process's share of ``total``, at least 1."""
    return max(1, total // (processes or _pool_processes))


def decode_processes(setting: int | str, *, cores: int | None = None, processes: int | None = None) -> int:
    """``NST_DECODE_WORKERS``: a number as it is; ``auto`` this pool process's share of the
    usable cores (2 on a 2-core host with one pool process, the count the CPU benchmarks ran)."""
    if setting != "auto":
        return int(setting)
    return share(usable_cores() if cores is None else cores, processes)
