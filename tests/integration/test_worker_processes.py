"""The real parts in real processes: uvicorn, `celery worker`, SQLite with the embedded broker,
and PostgreSQL with Redis. Redeliveries and two copies of one shard write each label once; the
SIGKILLs of pool processes and whole workers are tests/chaos/test_self_healing.py's.
"""

import os
import re
import time

import pytest
import redis
import torch

from tests.utils import env as test_env
from tests.utils.stack import Stack
from tests.utils.teacher import direct_probs

pytestmark = pytest.mark.slow

# Celery's log line for a label_shard task: (time, task id, "received", "succeeded", "retry", ...)
TASK_EVENT = r"\[([-0-9: ,]+): INFO/[\w-]+\] Task workers\.tasks\.label_shard\[([0-9a-f-]+)\] (\w+)"


@pytest.fixture(
    params=["embedded", pytest.param("postgres-redis", marks=[pytest.mark.postgres, pytest.mark.redis])]
)
def stack(request, tmp_path):
    extra = {}
    if request.param == "postgres-redis":
        extra = {"NST_DATABASE_URL": request.getfixturevalue("pg_url"), "NST_BROKER_URL": test_env.REDIS_URL}
        redis.Redis.from_url(test_env.REDIS_URL).flushdb()
    stack = Stack(tmp_path, extra)
    stack.kind = request.param
    stack.start_api()
    yield stack
    stack.stop()
    if request.param == "postgres-redis":
        redis.Redis.from_url(test_env.REDIS_URL).flushdb()


def _setup(stack, fmnist, teacher_file, **job_options):
    client = stack.client
    teacher = client.upload_teacher(teacher_file)
    dataset = client.register_dataset(name="pool", kind="unlabeled", path=fmnist / "unlabeled")
    teacher = client.wait_for_teacher(teacher["id"], timeout=120)
    return client, client.create_job(teacher_id=teacher["id"], dataset_id=dataset["id"], **job_options)


def _assert_exactly_once(client, job: dict, fmnist) -> list[dict]:
    labels = list(client.labels(job["id"]))
    item_ids = [label["item_id"] for label in labels]
    assert len(item_ids) == len(set(item_ids)) == job["items_total"] == 300
    assert {label["uri"] for label in labels} == {str(p) for p in (fmnist / "unlabeled").glob("*.png")}
    return labels


def test_a_real_worker_labels_like_a_direct_forward_pass(stack, fmnist, teacher_file):
    stack.start_worker()
    client, job = _setup(stack, fmnist, teacher_file, shard_size=100, batch_size=64)
    job = client.wait_for_job(job["id"], timeout=300)
    assert job["state"] == "succeeded", stack.logs()
    assert (job["items_done"], job["items_failed"], job["shards_done"]) == (300, 0, 3)
    (worker,) = client.workers()["data"]  # provenance: each shard names the worker that labeled it
    assert [s["workers"] for s in client.shards(job["id"])] == [[worker["name"]]] * 3
    truth = direct_probs(teacher_file, fmnist / "unlabeled")
    for label in _assert_exactly_once(client, job, fmnist):
        expected = truth[label["uri"]]
        assert label["predicted"] == int(expected.argmax())
        assert label["confidence"] == pytest.approx(float(expected.max()), abs=1e-4)


# Redis, whose visibility timeout redelivers, is where a shard arrives twice in one worker; the
# embedded broker's duplicates are the concurrent ones of the next test, run on both.
@pytest.mark.parametrize("stack", ["postgres-redis"], indirect=True)
@pytest.mark.postgres
@pytest.mark.redis
def test_duplicate_deliveries_write_each_label_once(stack, fmnist, teacher_file):
    stack.start_worker()
    client, job = _setup(stack, fmnist, teacher_file, shard_size=50, batch_size=16)
    client.resume_job(job["id"])  # every unfinished shard is sent again, twice
    client.resume_job(job["id"])
    job = client.wait_for_job(job["id"], timeout=300)
    assert job["state"] == "succeeded", stack.logs()
    assert job["items_done"] == 300
    _assert_exactly_once(client, job, fmnist)


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_two_pool_processes_share_the_cores_and_label_each_item_once(stack, fmnist, teacher_file):
    """``--concurrency 2`` with the default ``NST_DECODE_WORKERS=auto``: each pool process takes
    half the torch threads and half the cores' decode processes (workers/cores.py), and the
    job's shards, spread over both, label every item once."""
    stack.start_worker(concurrency=2)
    client, job = _setup(stack, fmnist, teacher_file, shard_size=50, batch_size=16)
    job = client.wait_for_job(job["id"], timeout=300)
    assert job["state"] == "succeeded", stack.logs()
    _assert_exactly_once(client, job, fmnist)
    threads, decoders = max(1, torch.get_num_threads() // 2), max(1, len(os.sched_getaffinity(0)) // 2)
    expected = f"pool process of 2: {threads} torch threads, {decoders} decode processes"
    (log,) = stack.log_dir.glob("worker*.log")
    assert log.read_text().count(expected) == 2, stack.logs()


def _task_events(stack, until_one: str, timeout: float = 60) -> list[list[tuple[str, str, str]]]:
    """Each worker's label_shard events, once one of them logged ``until_one``: the job's end is
    in the database before a worker's main process logs its task's (later on a loaded host)."""
    deadline = time.monotonic() + timeout
    while True:
        events = [re.findall(TASK_EVENT, p.read_text()) for p in stack.log_dir.glob("worker*.log")]
        if any(what == until_one for worker in events for _, _, what in worker):
            return events
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.2)


def _wait_until_ready(stack, workers: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while sum("ready." in p.read_text() for p in stack.log_dir.glob("worker*.log")) < workers:
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.2)


def test_two_workers_labeling_one_shard_at_once_write_each_label_once(stack, fmnist, teacher_file):
    """Two copies of one shard run side by side in two worker processes (a redelivery while
    the first still runs): each label is written once and the progress counts it once."""
    for _ in range(2):  # one message each: neither prefetches the other's copy
        stack.start_worker(NST_WORKER_PREFETCH="1", NST_COMMIT_ROWS="1")
    _wait_until_ready(stack, workers=2)
    client, job = _setup(stack, fmnist, teacher_file, shard_size=300, batch_size=1)  # one slow shard
    client.resume_job(job["id"])  # its second copy, for the idle worker
    job = client.wait_for_job(job["id"], timeout=300)
    assert job["state"] == "succeeded", stack.logs()
    assert (job["items_done"], job["shards_done"]) == (300, 1)
    _assert_exactly_once(client, job, fmnist)
    # No attempt count here: `resume` counts attempts afresh, so it reads 1 or 2 depending on
    # whether the first claim came before the resume. The workers' logs say what ran.
    # Each worker took one copy, and both had it before either finished: they ran side by side.
    events = _task_events(stack, until_one="succeeded")
    tasks = [{task for _, task, what in worker if what == "received"} for worker in events]
    assert [len(t) for t in tasks] == [1, 1] and tasks[0] != tasks[1], stack.logs()
    first_received = [min(time for time, _, what in worker if what == "received") for worker in events]
    finished = [time for worker in events for time, _, what in worker if what == "succeeded"]
    assert finished and max(first_received) < min(finished), stack.logs()  # a retry is received again


def _workers_by_pid(client, want, timeout: float = 60) -> dict[int, dict]:
    """GET /workers by main process, once ``want`` holds of it."""
    deadline = time.monotonic() + timeout
    while not want(found := {w["pid"]: w for w in client.workers()["data"]}):
        assert time.monotonic() < deadline, found
        time.sleep(0.2)
    return found


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_workers_report_online_then_stopped_after_a_warm_shutdown_or_lost_after_a_kill(stack):
    beat = {"NST_HEARTBEAT_S": "0.5"}
    stopping, killed = stack.start_worker(concurrency=2, **beat), stack.start_worker(**beat)
    pids = {stopping.pid, killed.pid}
    found = _workers_by_pid(
        stack.client, lambda f: {p for p, w in f.items() if w["state"] == "online"} == pids
    )
    assert (found[stopping.pid]["concurrency"], found[killed.pid]["concurrency"]) == (2, 1)
    assert found[stopping.pid]["device"] == "cpu" and found[stopping.pid]["name"].startswith("worker0-")
    assert stack.client.workers()["online"] == 2
    stopping.terminate()  # Celery's warm shutdown
    assert stopping.wait(timeout=60) == 0, stack.logs()
    found = _workers_by_pid(stack.client, lambda f: f[stopping.pid]["state"] == "stopped", timeout=5)
    assert found[killed.pid]["state"] == "online", (found, stack.logs())
    assert found[stopping.pid]["stopped_at"] is not None
    stack.kill_worker(killed)  # no goodbye: silent for three heartbeats, it is lost
    found = _workers_by_pid(stack.client, lambda f: f[killed.pid]["state"] == "lost", timeout=10)
    assert found[killed.pid]["stopped_at"] is None and stack.client.workers()["online"] == 0
