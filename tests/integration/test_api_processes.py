"""`nst api --workers N`: several API processes on one port, started together on a new database,
apply the migrations once between them and all serve; any of them answers a scrape of /metrics
with the requests all of them answered."""

import re
import time

import httpx
import pytest
import sqlalchemy as sa

from nst.config import get_settings
from service.core.db import make_engine
from tests.utils.stack import Stack, children

pytestmark = pytest.mark.slow

PROCESSES = 3


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_api_processes_started_together_on_a_new_database_all_serve(request, tmp_path, database):
    extra = {}
    if database == "postgres":
        extra["NST_DATABASE_URL"] = request.getfixturevalue("pg_url")
    stack = Stack(tmp_path, extra)
    try:
        client = stack.start_api(workers=PROCESSES)
        deadline = time.monotonic() + 60  # one answers; the others may still be migrating
        while (log := stack.logs(tail=100_000)).count("Application startup complete") < PROCESSES:
            assert time.monotonic() < deadline and "Traceback" not in log, log
            time.sleep(0.1)
        served = {client.health()["status"] for _ in range(20)}
        assert "Traceback" not in log and "Child process" not in log, log
        assert len(children(stack.api_process.pid)) >= PROCESSES
        assert served == {"ok"}
        assert client.datasets() == []
        counted = [_health_requests(stack.url) for _ in range(2 * PROCESSES)]
        assert min(counted) >= 20 and counted == sorted(counted), counted
    finally:
        stack.stop()
    engine = make_engine(extra.get("NST_DATABASE_URL") or get_settings().database_url)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
    engine.dispose()


def _health_requests(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(r'nst_http_requests_total\{method="GET",route="/health",status="200"\} (\S+)', text)
    assert found, text
    return float(found.group(1))
