"""Run the service's processes on this machine: the API under uvicorn and Celery workers, each
a separate process in its own session, stopped cleanly (SIGTERM, then SIGKILL) at the end.
The demo and the integration tests both use it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from nst.client import Client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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

    def start_api(self, timeout: float = 120) -> Client:
        args = [
            sys.executable,
            "-m",
            "uvicorn",
            "service.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.api_process = self._spawn("api", args, self.env)
        self.client.wait_until_up(timeout=timeout)
        return self.client

    def start_worker(self, concurrency: int = 1, **env: str) -> subprocess.Popen:
        name = f"worker{len(self.workers)}-{uuid.uuid4().hex[:6]}"
        args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "INFO",
            "--hostname",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
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
        for process in [*self.workers, self.api_process]:
            if process is None or process.poll() is not None:
                continue
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()
