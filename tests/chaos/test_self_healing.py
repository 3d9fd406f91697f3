"""Chaos: one fault injected mid-job into the real stack (uvicorn, `celery worker`, the embedded
broker on SQLite, or PostgreSQL with Redis), and the job still ends `succeeded` by itself: no
`resume`, one label per item, progress equal to the labels, no item error.

Each case prints ``CHAOS <fault> <stack> recovered_s=... labels=.../... duplicates=...`` (run
with -s to see it); docs/RELIABILITY.md records those lines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from cli import fashion_mnist
from cli.localstack import free_port
from tests.utils.stack import Stack, children

pytestmark = pytest.mark.slow

ITEMS = 2000
# Short bounds: a lost worker's shard comes back within ~3 s, a lost message within ~6 s.
HEALING = {
    "NST_LEASE_S": "3",
    "NST_REAPER_INTERVAL_S": "0.5",
    "NST_UNCLAIMED_S": "6",
    "NST_VISIBILITY_TIMEOUT_S": "600",  # recovery must not wait for Redis's own redelivery
    "NST_COMMIT_ROWS": "32",
}
PG_CLUSTER = ["pg_ctlcluster", "--skip-systemctl-redirect", *os.listdir("/etc/postgresql")[:1], "main"]


@pytest.fixture(scope="session")
def pool_images(shared_root) -> Path:
    """A few thousand real Fashion-MNIST PNGs to label."""
    images, labels = fashion_mnist.load("train")
    out = shared_root / "chaos-pool"
    fashion_mnist.write_unlabeled(out, images, labels, range(1000, 1000 + ITEMS))
    return out


@pytest.fixture
def private_redis(tmp_path):
    """A Redis of the test's own, so restarting it touches no other test."""
    port = free_port()
    server = _RedisServer(port, tmp_path)
    server.start()
    yield server
    server.stop()


class _RedisServer:
    def __init__(self, port: int, folder: Path):
        self.port, self.folder, self.process = port, folder, None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.folder)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, start_new_session=True)
        _until(lambda: _pings(self.url), 30, "redis did not start")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def _pings(url: str) -> bool:
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.ConnectionError:
        return False


@pytest.fixture(
    params=["embedded", pytest.param("postgres-redis", marks=[pytest.mark.postgres, pytest.mark.redis])]
)
def stack(request, tmp_path):
    env = dict(HEALING)
    if request.param == "postgres-redis":
        env["NST_DATABASE_URL"] = request.getfixturevalue("pg_url")
        env["NST_BROKER_URL"] = request.getfixturevalue("private_redis").url
    stack = Stack(tmp_path / "logs", env)
    stack.kind = request.param
    stack.start_api()
    yield stack
    stack.stop()


def _until(condition, timeout: float, message: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, message
        time.sleep(every)
    return value


def _start_job(stack, teacher_file, pool_images, **options) -> dict:
    client = stack.client
    teacher = client.wait_for_teacher(client.upload_teacher(teacher_file)["id"], timeout=180)
    dataset = client.register_dataset(name="pool", kind="unlabeled", path=pool_images)
    options = {"shard_size": 100, "batch_size": 32, **options}
    return client.create_job(teacher_id=teacher["id"], dataset_id=dataset["id"], **options)


def _progress(stack, job_id: int, at_least: int) -> int:
    def done():
        try:
            n = stack.client.job(job_id)["items_done"]
        except Exception:  # the API itself may be the fault
            return 0
        return n if n >= at_least else 0

    return _until(done, 180, f"no progress past {at_least}\n{stack.logs()}")


def _healed(stack, job_id: int, fault: str, since: float, timeout: float = 180) -> dict:
    """Wait for the job to succeed on its own; check it labeled each item once; print the line."""
    client = stack.client
    job = client.wait_for_job(job_id, timeout=timeout)
    recovered = time.monotonic() - since
    assert job["state"] == "succeeded", f"{job}\n{stack.logs()}"
    labels = [label["item_id"] for label in client.labels(job_id)]
    duplicates = len(labels) - len(set(labels))
    assert duplicates == 0 and len(labels) == job["items_total"] == ITEMS
    assert job["items_done"] == len(labels) and job["items_failed"] == 0
    assert list(client.item_errors(job_id)) == []
    shards = client.shards(job_id)
    print(
        f"\nCHAOS {fault} {stack.kind} recovered_s={recovered:.1f} labels={len(labels)}/{ITEMS} "
        f"duplicates={duplicates} max_attempts={max(s['attempts'] for s in shards)}"
    )
    return job


def test_sigkill_of_the_worker_main_process(stack, teacher_file, pool_images):
    worker = stack.start_worker()
    job = _start_job(stack, teacher_file, pool_images)
    _progress(stack, job["id"], at_least=200)
    stack.kill_main(worker)
    os.killpg(worker.pid, signal.SIGKILL)  # its orphaned pool process too: all of it is gone
    since = time.monotonic()
    assert stack.client.job(job["id"])["state"] == "running"
    stack.start_worker()
    _healed(stack, job["id"], "worker-main-sigkill", since)


def test_sigkill_of_a_decode_process(stack, teacher_file, pool_images):
    worker = stack.start_worker()
    job = _start_job(stack, teacher_file, pool_images)
    _progress(stack, job["id"], at_least=200)
    os.kill(stack.decode_child(worker), signal.SIGKILL)  # what the OOM killer does on a large image
    since = time.monotonic()
    _healed(stack, job["id"], "decode-process-sigkill", since)


@pytest.mark.parametrize("kills", [1, 3])
def test_sigkill_of_pool_processes(stack, teacher_file, pool_images, kills):
    """One pool process killed mid-shard, or three in quick succession (each replacement killed
    as soon as it appears, whether it took its next message or not)."""
    worker = stack.start_worker()
    job = _start_job(stack, teacher_file, pool_images)
    _progress(stack, job["id"], at_least=200)
    since = time.monotonic()
    killed = set()
    for _ in range(kills):
        pid = _until(lambda: next((p for p in _kids(worker) if p not in killed), None), 60, "no pool process")
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    _healed(stack, job["id"], f"pool-process-sigkill-x{kills}", since)


def _kids(worker) -> list[int]:
    return children(worker.pid)


def test_two_workers_two_jobs_one_worker_killed(stack, teacher_file, pool_images):
    first = stack.start_worker()
    stack.start_worker()
    one = _start_job(stack, teacher_file, pool_images)
    two = stack.client.create_job(teacher_id=one["teacher_id"], dataset_id=one["dataset_id"], shard_size=100)
    _progress(stack, one["id"], at_least=200)
    stack.kill_worker(first)
    since = time.monotonic()
    _healed(stack, one["id"], "two-workers-one-killed", since)
    _healed(stack, two["id"], "two-workers-one-killed(second job)", since)


def test_api_killed_and_restarted(stack, teacher_file, pool_images):
    stack.start_worker()
    job = _start_job(stack, teacher_file, pool_images)
    _progress(stack, job["id"], at_least=200)
    os.killpg(stack.api_process.pid, signal.SIGKILL)
    stack.api_process.wait()
    since = time.monotonic()
    stack.start_api()
    _healed(stack, job["id"], "api-sigkill-restart", since)


@pytest.mark.redis
def test_redis_restarted_empty(request, tmp_path, teacher_file, pool_images, private_redis):
    stack = _production_stack(request, tmp_path, private_redis)
    try:
        stack.start_worker()
        job = _start_job(stack, teacher_file, pool_images)
        _progress(stack, job["id"], at_least=200)
        private_redis.stop()  # no persistence: the queued shard messages are gone
        private_redis.start()
        since = time.monotonic()
        _healed(stack, job["id"], "redis-restart-empty", since)
    finally:
        stack.stop()


@pytest.mark.postgres
@pytest.mark.parametrize("down_s", [0, 12])
def test_postgres_restarted_or_down(request, tmp_path, teacher_file, pool_images, private_redis, down_s):
    """PostgreSQL restarted, or down longer than the task retries last (one retry here): the
    shards delivered meanwhile come back by themselves. The shared server: the outage is short
    and the server is started again whatever happens."""
    stack = _production_stack(request, tmp_path, private_redis, NST_TASK_MAX_RETRIES="1")
    try:
        stack.start_worker()
        job = _start_job(stack, teacher_file, pool_images)
        _progress(stack, job["id"], at_least=200)
        _postgres_outage(down_s)
        since = time.monotonic()
        _healed(stack, job["id"], f"postgres-down-{down_s}s", since)
    finally:
        stack.stop()


def _production_stack(request, tmp_path, private_redis, **env) -> Stack:
    env = {
        **HEALING,
        "NST_DATABASE_URL": request.getfixturevalue("pg_url"),
        "NST_BROKER_URL": private_redis.url,
        **env,
    }
    stack = Stack(tmp_path / "logs", env)
    stack.kind = "postgres-redis"
    stack.start_api()
    return stack


def _postgres_outage(seconds: float) -> None:
    subprocess.run([*PG_CLUSTER, "stop", "-m", "fast"], check=True)
    try:
        time.sleep(seconds)  # the outage is the fault being injected, not a wait for a condition
    finally:
        subprocess.run([*PG_CLUSTER, "start"], check=True)
