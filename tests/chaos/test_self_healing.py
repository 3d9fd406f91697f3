"""Chaos: one fault injected mid-job into the real stack (uvicorn, `celery worker`, the embedded
broker on SQLite, or PostgreSQL with Redis), and the job still ends `succeeded` by itself: no
`resume`, one label per item, progress equal to the labels, no item error.

One stack per backend serves every case (each case leaves it healthy and runs a fresh job);
the PostgreSQL and Redis servers are the stack's own, so stopping them touches no other test.
Each case prints ``CHAOS <fault> <stack> recovered_s=... labels=.../... duplicates=...`` (run
with -s to see it); docs/RELIABILITY.md records those lines.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import redis

from cli import fashion_mnist
from cli.localstack import free_port
from nst.client import NstError
from tests.utils.stack import Stack, children

pytestmark = pytest.mark.slow

ITEMS = 600
SHARD_SIZE = 50  # 12 shards: a fault lands mid-job, with shards queued behind it
# Short bounds: a dead worker's shard is sent again ~2 s after its last renewal, a lost message
# ~3 s after the stack went idle; Redis's own redelivery (the visibility timeout) never helps.
HEALING = {
    "NST_LEASE_S": "2",
    "NST_REAPER_INTERVAL_S": "0.25",
    "NST_UNCLAIMED_S": "3",
    "NST_VISIBILITY_TIMEOUT_S": "600",
    "NST_COMMIT_ROWS": "1",  # with batches of one, a shard takes ~0.3 s: a fault lands mid-shard
    "NST_TASK_MAX_RETRIES": "1",  # so a PostgreSQL outage of a few seconds outlasts the retries
}
FAULT_AT = 125  # items labeled before the fault: the middle of the third shard
RECOVERY_TIMEOUT = 120


@pytest.fixture(scope="session")
def pool_images(shared_root) -> Path:
    """Real Fashion-MNIST PNGs to label."""
    images, labels = fashion_mnist.load("train")
    out = shared_root / "chaos-pool"
    fashion_mnist.write_unlabeled(out, images, labels, range(1000, 1000 + ITEMS))
    return out


class _RedisServer:
    """A Redis of the stack's own, without persistence: a restart empties it."""

    def __init__(self, folder: Path):
        self.folder, self.process = folder, None
        self.url = f"redis://127.0.0.1:{free_port()}/0"

    def start(self) -> None:
        port = self.url.rsplit(":", 1)[1].split("/")[0]
        args = ["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", ""]
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


class _PostgresServer:
    """A PostgreSQL cluster of the stack's own (initdb as the postgres user, since the server
    refuses to run as root), on a free port; stopped and started by the outage cases."""

    def __init__(self):
        # Outside pytest's folders: the postgres user cannot enter root's private ones.
        self.folder, self.port = Path(tempfile.mkdtemp(prefix="nst-chaos-pg-")), free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._as_postgres("initdb", "-D", "data", "-A", "trust", "-U", "postgres", "--no-sync")

    def _as_postgres(self, program: str, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        command = [*prefix, str(self.bin / program), *args]
        done = subprocess.run(command, cwd=self.folder, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres("pg_ctl", "-D", "data", "-o", options, "-l", "log", "-w", "start")

    def stop(self) -> None:
        self._as_postgres("pg_ctl", "-D", "data", "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class ChaosStack(Stack):
    kind: str
    redis: _RedisServer | None = None
    postgres: _PostgresServer | None = None
    teacher_id: str
    dataset_id: int

    def live_workers(self) -> list[subprocess.Popen]:
        return [w for w in self.workers if w.poll() is None]

    def worker(self) -> subprocess.Popen:
        """The stack's live worker, started if a case left none."""
        return (self.live_workers() or [self.start_worker()])[0]

    def new_job(self) -> dict:
        job = self.client.create_job(
            teacher_id=self.teacher_id, dataset_id=self.dataset_id, shard_size=SHARD_SIZE, batch_size=1
        )
        assert job["items_total"] == ITEMS
        return job


@pytest.fixture(
    scope="module",
    params=["embedded", pytest.param("postgres-redis", marks=[pytest.mark.postgres, pytest.mark.redis])],
)
def stack(request, tmp_path_factory, pool_images, teacher_file):
    base = tmp_path_factory.mktemp(f"chaos-{request.param}")
    env = {**HEALING, "NST_DATA_DIR": str(base / "nst"), "NST_DATA_ROOTS": str(pool_images.parent)}
    servers = []
    if request.param == "postgres-redis":
        (base / "redis").mkdir()
        servers = [_RedisServer(base / "redis"), _PostgresServer()]
        env |= {"NST_BROKER_URL": servers[0].url, "NST_DATABASE_URL": servers[1].url}
    for server in servers:
        server.start()
    stack = ChaosStack(base / "logs", env)
    # Only this stack's settings: none left over from the test that ran before the module.
    stack.env = {k: v for k, v in stack.env.items() if not k.startswith("NST_") or k in env}
    stack.kind = request.param
    stack.redis, stack.postgres = (servers + [None, None])[:2]
    try:
        client = stack.start_api()
        stack.worker()
        teacher = client.wait_for_teacher(client.upload_teacher(teacher_file)["id"], timeout=180)
        stack.teacher_id = teacher["id"]
        stack.dataset_id = client.register_dataset(name="pool", kind="unlabeled", path=pool_images)["id"]
        yield stack
    finally:
        stack.stop()
        if stack.redis:
            stack.redis.stop()
        if stack.postgres:
            stack.postgres.remove()


def _until(condition, timeout: float, message, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, message() if callable(message) else message
        time.sleep(every)
    return value


def _read(stack, call):
    """The API's answer, or None while it (or its database) is the fault."""
    try:
        return call(stack.client)
    except (httpx.TransportError, NstError):
        return None


def _progress(stack, job_id: int, at_least: int = FAULT_AT) -> int:
    def done():
        job = _read(stack, lambda c: c.job(job_id))
        return job["items_done"] if job and job["items_done"] >= at_least else 0

    return _until(done, 180, lambda: f"no progress past {at_least}\n{stack.logs()}")


def _healed(stack, job_id: int, fault: str, since: float) -> dict:
    """Wait for the job to succeed on its own; check it labeled each item once; print the line."""

    def finished():
        job = _read(stack, lambda c: c.job(job_id))
        return job if job and job["state"] in ("succeeded", "failed", "cancelled") else None

    job = _until(finished, RECOVERY_TIMEOUT, lambda: f"job {job_id} unfinished\n{stack.logs()}", every=0.1)
    recovered = time.monotonic() - since
    assert job["state"] == "succeeded", f"{job}\n{stack.logs()}"
    client = stack.client
    labels = [label["item_id"] for label in client.labels(job_id)]
    duplicates = len(labels) - len(set(labels))
    assert duplicates == 0 and len(labels) == job["items_total"] == ITEMS
    assert job["items_done"] == len(labels) and job["items_failed"] == 0
    assert list(client.item_errors(job_id)) == []
    shards = list(client.shards(job_id))
    assert all(s["state"] == "succeeded" and s["items_done"] == SHARD_SIZE for s in shards)
    print(
        f"\nCHAOS {fault} {stack.kind} recovered_s={recovered:.1f} labels={len(labels)}/{ITEMS} "
        f"duplicates={duplicates} extra_claims={sum(s['attempts'] for s in shards) - len(shards)} "
        f"max_attempts={max(s['attempts'] for s in shards)}"
    )
    return job


def test_sigkill_of_the_worker_main_process(stack):
    """The main process alone (its pool process orphaned, then gone too), a fresh worker started."""
    worker = stack.worker()
    job = stack.new_job()
    _progress(stack, job["id"])
    stack.kill_main(worker)
    os.killpg(worker.pid, signal.SIGKILL)  # its orphaned pool and decode processes too
    since = time.monotonic()
    stack.start_worker()
    _healed(stack, job["id"], "worker-main-sigkill", since)


def test_sigkill_of_a_decode_process(stack):
    worker = stack.worker()
    job = stack.new_job()
    _progress(stack, job["id"])
    os.kill(stack.decode_child(worker), signal.SIGKILL)  # what the OOM killer does on a large image
    since = time.monotonic()
    _healed(stack, job["id"], "decode-process-sigkill", since)


def test_sigkill_of_pool_processes(stack, kills=3):
    """One pool process killed mid-shard, then its replacements too, each killed as soon as it
    appears, between shards (whether it took its next message or not). The first kill alone is
    the same fault the later ones follow, so it has no run of its own."""
    worker = stack.worker()
    job = stack.new_job()
    _progress(stack, job["id"])
    since = time.monotonic()
    killed: set[int] = set()
    for _ in range(kills):
        pid = _until(
            lambda: next((p for p in children(worker.pid) if p not in killed), None), 60, "no pool process"
        )
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    _healed(stack, job["id"], f"pool-process-sigkill-x{kills}", since)


# Several workers share a broker and a database server in production; the embedded stack's
# worker deaths are the single-worker tests above, run on both.
@pytest.mark.parametrize("stack", ["postgres-redis"], indirect=True)
@pytest.mark.postgres
@pytest.mark.redis
def test_two_workers_two_jobs_one_worker_killed(stack):
    first = stack.worker()
    stack.start_worker()
    one, two = stack.new_job(), stack.new_job()
    _progress(stack, one["id"])
    stack.kill_worker(first)
    since = time.monotonic()
    _healed(stack, one["id"], "two-workers-one-killed", since)
    _healed(stack, two["id"], "two-workers-one-killed(second-job)", since)


def test_api_killed_and_restarted(stack):
    stack.worker()
    job = stack.new_job()
    _progress(stack, job["id"])
    os.killpg(stack.api_process.pid, signal.SIGKILL)
    stack.api_process.wait()
    since = time.monotonic()
    stack.start_api()
    _healed(stack, job["id"], "api-sigkill-restart", since)


# The embedded broker is the database file: no broker or database server of its own to restart.
SERVERS = pytest.mark.parametrize("stack", ["postgres-redis"], indirect=True)


@SERVERS
@pytest.mark.postgres
@pytest.mark.redis
def test_redis_restarted_empty(stack):
    stack.worker()
    job = stack.new_job()
    _progress(stack, job["id"])
    stack.redis.stop()  # no persistence: the queued shard messages are gone
    since = time.monotonic()
    stack.redis.start()
    _healed(stack, job["id"], "redis-restart-empty", since)


@SERVERS
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("down_s", [0, 6])
def test_postgres_restarted_or_down(stack, down_s):
    """PostgreSQL restarted, or down longer than the task retries last (one retry: a few
    seconds): the shards delivered meanwhile come back by themselves."""
    stack.worker()
    job = stack.new_job()
    _progress(stack, job["id"])
    stack.postgres.stop()
    since = time.monotonic()
    try:
        time.sleep(down_s)  # the outage is the fault being injected, not a wait for a condition
    finally:
        stack.postgres.start()
    _healed(stack, job["id"], f"postgres-down-{down_s}s", since)
