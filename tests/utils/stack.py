"""The real stack in processes (``cli.localstack``), plus what tests need to kill it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from cli.localstack import LocalStack


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


class Stack(LocalStack):
    def pool_child(self, worker: subprocess.Popen, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while not (kids := children(worker.pid)):
            if time.monotonic() > deadline:
                raise TimeoutError("the worker started no pool process")
            time.sleep(0.1)
        return kids[0]

    def kill_worker(self, worker: subprocess.Popen) -> None:
        """SIGKILL the whole worker: its main process and every pool and decoder process."""
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
