"""Celery's prefork pool, with queue locks that a killed pool process cannot leave held.

Without an event loop (the embedded broker has none) Celery runs billiard's plain pool: its
processes share one pipe of tasks and one of results, each guarded by a semaphore. An idle
process waits for its next task *holding* the task pipe's semaphore, so a SIGKILL or the OOM
killer taking an idle process leaves that semaphore held by nobody: every replacement waits on
it forever, the pool never starts another task and the worker's jobs stall (the reaper sends
their shards again, to the same wedged worker, until they fail). Here those two locks are POSIX
record locks (``fcntl.lockf``) on a file of their own, which the kernel releases when their
holder dies. With an event loop (Redis, RabbitMQ) Celery's own pool gives each process pipes of
its own, and nothing changes.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
import weakref
from pathlib import Path

from billiard.pool import Pool as BillardPool
from celery.concurrency import prefork

# How often a bounded wait retries a held lock: the locks guard one short pipe read or write.
_RETRY_S = 0.005


def _remove(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # never from a forked pool process
        Path(path).unlink(missing_ok=True)


class ProcessLock:
    """A lock between processes that its holder's death releases; ``multiprocessing.Lock``'s
    interface (acquire with block and timeout, release, a context manager).

    A record lock belongs to a process, not to a file descriptor or a thread: each process opens
    the file for itself (after fork, on first use), and two threads of one process do not
    exclude each other. In the pool only each process's one worker thread takes these locks."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="nst-pool-", suffix=".lock")
        os.close(fd)
        self._fd: int | None = None
        self._fd_pid = 0
        weakref.finalize(self, _remove, self.path, os.getpid())

    def _own_fd(self) -> int:
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            self._fd_pid = os.getpid()
        return self._fd

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        fd = self._own_fd()
        if block and timeout is None:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            return True
        deadline = time.monotonic() + ((timeout or 0.0) if block else 0.0)
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(_RETRY_S)

    def release(self) -> None:
        fcntl.lockf(self._own_fd(), fcntl.LOCK_UN)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __getstate__(self) -> dict:
        # A spawned process opens the file itself.
        return {"path": self.path, "_fd": None, "_fd_pid": 0}


class BlockingPool(BillardPool):
    """billiard's pool with the two locks its processes share made ``ProcessLock``s: the task
    pipe's read lock and the result pipe's write lock. The main process writes tasks and reads
    results without locks, so these are all."""

    def _setup_queues(self) -> None:
        super()._setup_queues()
        self._inqueue._rlock = ProcessLock()
        self._outqueue._wlock = ProcessLock()


class TaskPool(prefork.TaskPool):
    """``--pool prefork`` for nst's workers (``worker_pool`` in service/queue.py)."""

    BlockingPool = BlockingPool
