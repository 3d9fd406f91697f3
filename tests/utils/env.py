"""Settings and database plumbing for tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("NST_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
# pytest-xdist's workers (gw0, gw1, ...) each get a Redis database of their own, since the tests
# that use it flush it.
_XDIST_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
assert _XDIST_INDEX < 16, "Redis has databases 0-15: run at most 16 test processes"
REDIS_URL = os.environ.get("NST_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{15 - _XDIST_INDEX}")


def clear_caches() -> None:
    from nst.config import get_settings
    from service.core.db import get_engine, get_session_factory

    if get_engine.cache_info().currsize:
        get_engine().dispose()
    for cached in (get_settings, get_engine, get_session_factory):
        cached.cache_clear()
    try:
        from workers.teacher_model import cached_teacher
    except ImportError:
        return
    cached_teacher.cache_clear()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty database on the local PostgreSQL server, dropped afterwards."""
    name = f"nst_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield str(sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(False))
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
