"""What the benchmarks share: a bench folder, a fresh PostgreSQL database, the local stack with
its logs on failure, a median clock and the table that sets a result against its baseline."""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from cli.localstack import LocalStack

ADMIN_URL = os.environ.get("NST_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")


def bench_root(folder: Path | None, prefix: str) -> Path:
    """``folder``, or a new temporary folder when none is given (see ``local_stack``)."""
    return (folder or Path(tempfile.mkdtemp(prefix=prefix))).resolve()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on NST_TEST_PG_ADMIN_URL's server, through psycopg 3, dropped afterwards."""
    admin_url = sa.engine.make_url(ADMIN_URL).set(drivername="postgresql+psycopg")
    name = f"nst_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def local_stack(root: Path, env: dict[str, str], *, remove: bool) -> Iterator[LocalStack]:
    """The API and workers as processes, logging under ``root/logs``; their logs are printed when
    the benchmark fails, and ``root`` is removed at the end when ``remove``. The stack's SIGTERM
    handling unwinds to that removal too."""
    stack = LocalStack(root / "logs", env)
    try:
        with stack:
            yield stack
    except Exception:
        print(stack.logs(), file=sys.stderr)
        raise
    finally:
        if remove:
            shutil.rmtree(root, ignore_errors=True)


def median_time(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    """The median of ``repeat`` runs, in seconds, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def print_table(headers: list[str], rows: Iterable[Iterable[object]], target: str | None = None) -> None:
    """A Markdown table, then the target its ratio column is held to."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    if target:
        print(f"\ntarget: {target}")
