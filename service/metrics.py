"""What an operator watches, in Prometheus's text format (served at ``/metrics``).

Two kinds of figures, so that several API processes never disagree:

* Requests (counts and latencies per route template) are counted in this process: each API
  process reports its own, and Prometheus sums them over its targets.
* Jobs, shards, labels, item errors and attempts are read from the database at scrape time:
  every API process reports the same values, and the workers' figures arrive this way too (they
  write them into the shard rows). Each is an aggregate over the ``shards`` table, one row per
  shard and never one per label, so a scrape costs the same for a job of a thousand labels or
  of a million (bench/metrics_scrape.py).

The queue depth is asked of the broker itself: the list length on Redis, the visible rows of the
embedded SQLAlchemy broker's message table.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nst.states import JobState, ShardState
from service import lifecycle
from service.core.db import get_session_factory
from service.models import Job, Shard

UNMATCHED = "<unmatched>"  # one label for every path no route knows, so scanners add no series


class RequestMetrics:
    """ASGI middleware: a count and a latency per method, route template and status."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "nst_http_requests",
            "HTTP requests answered by this API process",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "nst_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response body, in this API process",
            ["method", "route"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, root_path = time.perf_counter(), scope.get("root_path", "")
        status = 500  # what the client gets if the app raises before it starts a response

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route, method = _route_template(scope, root_path), scope["method"]
            self.requests.labels(method, route, str(status)).inc()
            self.latency.labels(method, route).observe(time.perf_counter() - start)


def _route_template(scope: Scope, root_path: str) -> str:
    """The template of the route that answered (``/jobs/{job_id}``), not the raw path."""
    route = getattr(scope.get("route"), "path", None)
    if route:
        return route
    # A mount (the UI's static files) records no route; it extends the root path instead.
    mounted = scope.get("root_path", "")
    if mounted != root_path:
        return mounted[len(root_path) :] + "/{path}"
    return UNMATCHED


class DatabaseCollector(Collector):
    """Job, shard, label and item-error figures, read from the database at each scrape."""

    def collect(self) -> Iterator[Metric]:
        with get_session_factory()() as session:
            per_job_state = session.execute(
                select(
                    Shard.job_id,
                    Shard.state,
                    func.count(),
                    func.count().filter(Shard.attempts > 0),
                    func.coalesce(func.sum(Shard.items_done), 0),
                    func.coalesce(func.sum(Shard.items_failed), 0),
                    func.coalesce(func.sum(Shard.attempts), 0),
                ).group_by(Shard.job_id, Shard.state)
            ).all()
            jobs = session.scalars(select(Job)).all()
        shards, by_job = Tally(), {}
        done = failed = attempts = 0
        for job_id, state, count, claimed, items_done, items_failed, tries in per_job_state:
            shards[state] += count
            done, failed, attempts = done + items_done, failed + items_failed, attempts + tries
            tally = by_job.setdefault(job_id, Tally())
            tally[state] += count
            tally["started"] += claimed
        job_states = Tally()
        for job in jobs:
            counts = by_job.get(job.id, Tally())
            job_states[
                lifecycle.job_state(
                    job,
                    shards_done=counts[ShardState.SUCCEEDED],
                    shards_failed=counts[ShardState.FAILED],
                    shards_started=counts["started"],
                )
            ] += 1
        yield _gauge("nst_jobs", "Labeling jobs by state (derived from their shards)", job_states, JobState)
        yield _gauge("nst_shards", "Shards of every job by state", shards, ShardState)
        yield CounterMetricFamily("nst_labels_written", "Labels committed by the workers", value=done)
        yield CounterMetricFamily(
            "nst_item_errors", "Items the workers could not label (read, decode)", value=failed
        )
        yield CounterMetricFamily(
            "nst_shard_attempts",
            "Times a worker claimed a shard (a retry or redelivery adds one)",
            value=attempts,
        )


def _gauge(name: str, documentation: str, counts: Tally, states) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["state"])
    for state in states:  # every state, zeros included, so a rule sees 0 rather than no series
        family.add_metric([state.value], counts[state])
    return family


class QueueCollector(Collector):
    """Messages waiting on the broker's queue, as the broker counts them."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s

    def collect(self) -> Iterator[Metric]:
        from service.queue import app  # the Celery app the API enqueues through

        queue = app.conf.task_default_queue
        up = GaugeMetricFamily("nst_broker_up", "1 when the broker answered this scrape")
        depth = GaugeMetricFamily("nst_queue_depth", "Messages waiting on the queue", labels=["queue"])
        try:
            with app.connection_for_read(connect_timeout=self.timeout_s) as conn:
                conn.ensure_connection(max_retries=1, timeout=self.timeout_s)
                # queue_declare answers (name, messages ready, consumers) on every kombu transport.
                waiting = conn.default_channel.queue_declare(queue=queue).message_count
        except Exception:  # kombu raises many types for a broker that is down
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        depth.add_metric([queue], waiting)
        yield up
        yield depth


def metrics_registry() -> CollectorRegistry:
    """The registry a scrape reads: the database's and the broker's figures; ``RequestMetrics``
    adds this process's request metrics to it."""
    registry = CollectorRegistry()
    registry.register(DatabaseCollector())
    registry.register(QueueCollector())
    return registry
