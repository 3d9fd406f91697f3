"""The worker's prefork pool survives a pool process killed while it waits for a task."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time

import pytest
from billiard.pool import Pool as BilliardPool

from workers.pool import BlockingPool, ProcessLock


def _pid() -> int:
    return os.getpid()


def _hold_then_wait(lock: ProcessLock, held) -> None:
    lock.acquire()
    held.set()
    time.sleep(60)


def test_a_killed_holder_releases_the_lock():
    lock = ProcessLock()
    held = multiprocessing.get_context("fork").Event()
    holder = multiprocessing.get_context("fork").Process(target=_hold_then_wait, args=(lock, held))
    holder.start()
    assert held.wait(10)
    assert not lock.acquire(timeout=0.1)  # held by the live process
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    assert lock.acquire(timeout=5)
    lock.release()


def _kill_idle_process_then_run(pool, answer_s: float = 10) -> int:
    first = pool.apply_async(_pid).get(timeout=30)
    time.sleep(0.3)  # idle again: waiting for the next task, inside the task pipe's read lock
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while first in [p.pid for p in pool._pool] and time.monotonic() < deadline:
        time.sleep(0.05)  # billiard's supervisor replaces the process
    return pool.apply_async(_pid).get(timeout=answer_s)


def test_a_replacement_runs_tasks_after_an_idle_process_is_killed():
    pool = BlockingPool(processes=1)
    try:
        for _ in range(3):
            assert _kill_idle_process_then_run(pool) > 0
    finally:
        pool.terminate()


def _billiard_pool_runs_a_task_after_a_kill(result) -> None:
    """In a process group of its own, so the wedged pool and its replacements can be killed whole:
    a wedged billiard pool in the test process would hang the interpreter's exit."""
    os.setpgrp()
    pool = BilliardPool(processes=1)
    try:
        _kill_idle_process_then_run(pool, answer_s=3)  # BlockingPool answers in well under 1 s
        result.send("ran")
    except multiprocessing.TimeoutError:
        result.send("wedged")
    os._exit(0)  # skip billiard's exit handlers, which would wait on the wedged pool


@pytest.mark.slow
def test_billiards_own_pool_wedges_there():
    """The fault the pool above exists for: with billiard's semaphore, the replacement waits on a
    lock the dead process holds, and the task never runs."""
    fork = multiprocessing.get_context("fork")
    received, result = fork.Pipe(duplex=False)
    child = fork.Process(target=_billiard_pool_runs_a_task_after_a_kill, args=(result,))
    child.start()
    try:
        assert received.poll(90), "the child reported nothing"
        assert received.recv() == "wedged"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.join(10)


def test_the_worker_runs_this_pool():
    """`--pool prefork`, the command line `nst worker` runs, resolves to the configured pool."""
    from celery.concurrency import get_implementation

    from service.queue import app
    from workers.pool import TaskPool

    assert get_implementation(app.conf.worker_pool) is TaskPool
    assert TaskPool.BlockingPool is BlockingPool
