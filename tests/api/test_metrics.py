import uuid
from collections import Counter
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete, insert, update

from service.core.db import session_scope
from service.models import ItemError, Label, Shard, utcnow
from tests.utils import env as test_env
from tests.utils import synthetic
from tests.utils.env import clear_caches

CLASSES = ["cat", "dog", "eel"]


def scrape(client, **headers) -> dict[str, dict[tuple, float]]:
    """Each sample by name, then by its labels as sorted (key, value) pairs."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def requests_of(samples, route: str, status: str) -> float:
    key = (("method", "GET"), ("route", route), ("status", status))
    return samples.get("nst_http_requests_total", {}).get(key, 0)


def test_request_counts_and_latencies_move_per_route_template(client):
    before = scrape(client)
    client.get("/jobs")
    client.get("/jobs/41")
    client.get("/jobs/42")
    client.get("/no/such/path")
    after = scrape(client)
    assert requests_of(after, "/jobs", "200") == requests_of(before, "/jobs", "200") + 1
    assert requests_of(after, "/jobs/{job_id}", "404") == 2  # the template, never /jobs/41
    assert requests_of(after, "<unmatched>", "404") == 1
    assert not any("/jobs/41" in str(key) for key in after["nst_http_requests_total"])
    latency = after["nst_http_request_duration_seconds_count"]
    assert latency[(("method", "GET"), ("route", "/jobs/{job_id}"))] == 2


def test_token_guards_metrics(monkeypatch, enqueued):
    monkeypatch.setenv("NST_API_TOKEN", "s3cret")
    clear_caches()
    from service.main import create_app

    with TestClient(create_app()) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        samples = scrape(client, Authorization="Bearer s3cret")
    assert "nst_jobs" in samples


@pytest.mark.usefixtures("backend")  # first, so that the app opens the right database
def test_job_shard_label_and_error_figures_equal_the_api(client):
    teacher = synthetic.teacher(CLASSES)
    done = synthetic.finished_job(teacher, [(0, 0.9), (1, 0.8), (2, 0.7)])
    running = synthetic.finished_job(teacher, [(1, 0.6)], state="running")
    broken = synthetic.finished_job(teacher, [(0, 0.5)] * 5, state="failed")
    with session_scope() as session:
        # Two of its items failed instead of being labeled; the reaper sent its shard twice.
        session.execute(
            delete(Label).where(Label.job_id == broken.id, Label.item_id.in_(broken.item_ids[:2]))
        )
        session.execute(
            insert(ItemError),
            [
                {
                    "job_id": broken.id,
                    "item_id": broken.item_ids[0],
                    "message": "no image",
                    "kind": "permanent",
                },
                {"job_id": broken.id, "item_id": broken.item_ids[1], "message": "EIO", "kind": "transient"},
            ],
        )
        session.execute(
            update(Shard)
            .where(Shard.job_id == broken.id)
            .values(items_done=3, items_failed=2, attempts=4, reaped_count=2, lease_expiries=1)
        )
        # The running shard's worker died: its lease lapsed a minute ago.
        session.execute(
            update(Shard)
            .where(Shard.job_id == running.id)
            .values(lease_expires_at=utcnow() - timedelta(minutes=1))
        )
    body = {"teacher_id": teacher, "dataset_id": done.dataset_id, "shard_size": 2, "top_k": 3}
    queued, cancelled = (client.post("/jobs", json=body) for _ in range(2))
    assert queued.status_code == cancelled.status_code == 201, queued.text
    assert client.post(f"/jobs/{cancelled.json()['id']}/cancel").status_code == 200

    jobs = client.get("/jobs").json()["data"]
    shards = [s for j in jobs for s in client.get(f"/jobs/{j['id']}/shards").json()["data"]]
    errors = sum(len(client.get(f"/jobs/{j['id']}/errors").json()["data"]) for j in jobs)
    samples = scrape(client)

    by_state = {dict(k)["state"]: v for k, v in samples["nst_jobs"].items()}
    assert by_state == {s: Counter(j["state"] for j in jobs)[s] for s in by_state}
    assert set(by_state.values()) == {1}  # one job in each state
    shard_states = {dict(k)["state"]: v for k, v in samples["nst_shards"].items()}
    assert shard_states == {s: Counter(s_["state"] for s_ in shards)[s] for s in shard_states}
    assert samples["nst_labels_written_total"][()] == sum(j["items_done"] for j in jobs) == 3 + 1 + 3
    kinds = {dict(k)["kind"]: v for k, v in samples["nst_item_errors"].items()}
    assert sum(kinds.values()) == sum(j["items_failed"] for j in jobs) == errors == 2
    assert kinds == {"permanent": 1, "transient": 1, "suspect": 0}
    assert samples["nst_shard_attempts_total"][()] == sum(s["attempts"] for s in shards) == 1 + 1 + 4
    assert samples["nst_shard_reenqueues_total"][()] == 2
    assert samples["nst_shard_leases_expired"][()] == 1
    assert samples["nst_shard_lease_expiries_total"][()] == 1
    assert 0 < samples["nst_oldest_queued_shard_seconds"][()] < 60  # the queued job's shards, just sent


def test_workers_by_state_equal_the_api(client):
    from service.crud import workers

    synthetic.migrate()
    beat = {"device": "cpu", "concurrency": 1, "heartbeat_s": 5.0}
    with session_scope() as session:
        for pid in (1, 2):
            workers.report(session, name=f"w{pid}@host", pid=pid, **beat)
        workers.report(session, name="w3@host", pid=3, now=utcnow() - timedelta(minutes=2), **beat)
        workers.report(session, name="w4@host", pid=4, **beat)
        workers.report_stopped(session, name="w4@host", pid=4)
    by_state = {dict(k)["state"]: v for k, v in scrape(client)["nst_workers"].items()}
    listed = client.get("/workers").json()
    assert by_state == {"online": 2, "stopped": 1, "lost": 1} == Counter(w["state"] for w in listed["data"])
    assert by_state["online"] == listed["online"]


@pytest.mark.parametrize("broker", ["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def test_queue_depth_counts_enqueued_shards(broker, monkeypatch):
    if broker == "redis":
        monkeypatch.setenv("NST_BROKER_URL", test_env.REDIS_URL)
        clear_caches()
    from service import queue
    from service.main import create_app

    # A Celery app on this test's broker, with a queue of its own: no other test's messages.
    app = queue.make_celery()
    app.conf.task_default_queue = f"nst-metrics-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(queue, "app", app)
    try:
        with TestClient(create_app()) as client:
            teacher = synthetic.teacher(CLASSES)
            dataset = synthetic.finished_job(teacher, [(0, 0.9)] * 5).dataset_id
            queue_key = (("queue", app.conf.task_default_queue),)
            assert scrape(client)["nst_queue_depth"][queue_key] == 0
            job = client.post(
                "/jobs", json={"teacher_id": teacher, "dataset_id": dataset, "shard_size": 2, "top_k": 3}
            )
            assert job.status_code == 201, job.text
            samples = scrape(client)
            assert samples["nst_broker_up"][()] == 1
            assert samples["nst_queue_depth"][queue_key] == job.json()["shards_total"] == 3
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(app.conf.task_default_queue)
        app.close()


def test_broker_down_reads_as_broker_up_zero(monkeypatch, client):
    from service import queue

    monkeypatch.setenv("NST_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    clear_caches()
    app = queue.make_celery()
    monkeypatch.setattr(queue, "app", app)
    samples = scrape(client)
    assert samples["nst_broker_up"][()] == 0 and "nst_queue_depth" not in samples
    assert "nst_jobs" in samples  # the database's figures still come
    app.close()
