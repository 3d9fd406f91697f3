"""The real stack in processes (``cli.localstack``), plus what tests need to kill it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path

from cli.localstack import LocalStack


def children(pid: int) -> list[int]:
    """Every thread's children: billiard forks a replacement pool process from a thread."""
    kids = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with suppress(OSError):  # the thread ended meanwhile
            kids += [int(p) for p in path.read_text().split()]
    return sorted(kids)


class Stack(LocalStack):
    orphans: list[int]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.orphans = []

    def pool_child(self, worker: subprocess.Popen, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while not (kids := children(worker.pid)):
            if time.monotonic() > deadline:
                raise TimeoutError("the worker started no pool process")
            time.sleep(0.1)
        return kids[0]

    def decode_child(self, worker: subprocess.Popen, timeout: float = 60) -> int:
        """A decode process of the worker's (first) pool process, once it has started them."""
        deadline = time.monotonic() + timeout
        while not (kids := children(self.pool_child(worker, timeout))):
            if time.monotonic() > deadline:
                raise TimeoutError("the pool process started no decode process")
            time.sleep(0.05)
        return kids[0]

    def kill_main(self, worker: subprocess.Popen) -> None:
        """SIGKILL only the worker's main process; its pool processes, orphaned, go with their
        group at the end of the test (or exit when they notice)."""
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        self.orphans.append(worker.pid)

    def stop(self) -> None:
        """SIGKILL to every group: a test has made its checks by now, and a warm shutdown would
        only add Celery's 3-7 s a worker. LocalStack's own stop is tests/cli/test_localstack.py's."""
        self.client.close()
        running = [p for p in [*self.workers, self.api_process] if p is not None and p.poll() is None]
        for group in [p.pid for p in running] + self.orphans:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        for process in running:
            process.wait()

    def kill_worker(self, worker: subprocess.Popen) -> None:
        """SIGKILL the whole worker: its main process and every pool and decoder process."""
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
