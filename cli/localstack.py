"""Run the service's processes on this machine: the API under uvicorn and Celery workers, each
a separate process in its own session, stopped cleanly (SIGTERM, then SIGKILL) at the end.
The demo and the integration tests both use it.

Each process runs in its own session, so nothing else stops them when their owner goes: the
stack stops whole process groups (pool and decode processes too), and used as a context manager
in the main thread it turns a SIGTERM of its owner into a normal exit, so that happens then too."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from nst.client import Client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def celery_worker_args(concurrency: int, *extra: str) -> list[str]:
    """The command line of a labeling worker: `nst worker` runs it, the local stack spawns it."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.tasks",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        *extra,
    ]


class LocalStack:
    def __init__(self, log_dir: Path, env: dict[str, str] | None = None, port: int | None = None):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_process: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.client = Client(self.url, token=self.env.get("NST_API_TOKEN"), timeout=60)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        with (self.log_dir / f"{name}.log").open("ab") as log:  # the child keeps its own copy
            return subprocess.Popen(
                args,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def start_api(self, timeout: float = 120, workers: int = 1) -> Client:
        args = [
            sys.executable,
            "-m",
            "cli.main",
            "api",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
        ]
        self.api_process = self._spawn("api", args, self.env)
        self.client.wait_until_up(timeout=timeout)
        return self.client

    def start_worker(self, concurrency: int = 1, **env: str) -> subprocess.Popen:
        name = f"worker{len(self.workers)}-{uuid.uuid4().hex[:6]}"
        quiet = ("--without-gossip", "--without-mingle")  # no chatter between the stack's workers
        args = celery_worker_args(concurrency, "--hostname", f"{name}@%h", *quiet)
        process = self._spawn(name, args, {**self.env, **env})
        self.workers.append(process)
        return process

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Every process of the stack stopped (SIGSTOP to each process group: pool and decode
        processes too) for the duration, then continued: a baseline measured meanwhile does not
        share the cores with the stack's idle polling."""
        stopped = []
        try:
            for process in [*self.workers, self.api_process]:
                if process is not None and process.poll() is None:
                    os.killpg(process.pid, signal.SIGSTOP)
                    stopped.append(process.pid)
            yield
        finally:
            for group in stopped:
                with suppress(ProcessLookupError):  # the group ended meanwhile: nothing to continue
                    os.killpg(group, signal.SIGCONT)

    def stop(self) -> None:
        self.client.close()
        # A second SIGTERM of the owner must not cut the stopping short; it is delivered after.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            self._stop_groups()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

    def _stop_groups(self) -> None:
        # Only groups whose leader is not reaped yet: a reaped leader's pid, which is its group's
        # id, may already belong to an unrelated process. A leader that died and was reaped
        # before (a test's SIGKILL of the whole group) has nothing left to stop.
        running = [p for p in [*self.workers, self.api_process] if p is not None and p.poll() is None]
        try:
            # All at once: the groups shut down side by side.
            for process in running:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            for process in running:
                _wait_for_exit_unreaped(process, deadline)
        finally:
            # Even when something interrupts the waits (a signal handler of the owner raising,
            # as PyTorch's does when one of its loader processes dies): the leader, exited but
            # not reaped, still holds its group's id, so the whole group (a pool or decode
            # process that outlived the leader, or one that ignores SIGTERM) is killed, then the
            # leader reaped.
            for process in running:
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> LocalStack:
        # Signal handlers can only be set from the main thread; elsewhere the owner keeps its own.
        self._handles_sigterm = threading.current_thread() is threading.main_thread()
        if self._handles_sigterm:
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(self, *_exc) -> None:
        try:
            self.stop()
        finally:
            if self._handles_sigterm:
                # None: the previous handler was not set from Python; the default is what it was.
                signal.signal(signal.SIGTERM, self._previous_sigterm or signal.SIG_DFL)


def _wait_for_exit_unreaped(process: subprocess.Popen, deadline: float) -> None:
    """Until the process has exited or the deadline passed, leaving it unreaped (WNOWAIT)."""
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            return
        time.sleep(0.05)


def _exit_on_sigterm(signum: int, _frame) -> None:
    # SystemExit unwinds through every `with` and `finally` above, LocalStack.__exit__ included.
    raise SystemExit(128 + signum)
