"""What an operator watches, in Prometheus's text format (served at ``/metrics``).

Two kinds of figures, so that several API processes never disagree:

* Requests (counts and latencies per route template) are counted in this process: each API
  server reports its own, and Prometheus sums them over its targets. The processes of one
  server (``nst api --workers N``) share one port, so they count in prometheus_client's
  multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) and any of them answers a scrape with the
  sum over all of them.
* Jobs, shards, labels, attempts, re-enqueues, lapsed leases and item errors are read from the
  database at scrape time: every API process reports the same values, and the workers' figures
  arrive this way too (they write them into the shard rows). All but the item errors are one
  aggregate over the ``shards`` table, one row per shard and never one per label, so a scrape
  costs the same for a job of a thousand labels or of a million (bench/metrics_scrape.py); the
  item errors by kind are counted over their own table.

The queue depth is asked of the broker itself: the list length on Redis, the visible rows of the
embedded SQLAlchemy broker's message table.
"""

from __future__ import annotations

import os
import time
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, or_, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nst.states import JobState, ShardState, WorkerState
from service import lifecycle
from service.core.db import get_session_factory
from service.crud.workers import list_workers
from service.models import ItemError, Job, Shard, utcnow

ERROR_KINDS = (lifecycle.PERMANENT, lifecycle.TRANSIENT, lifecycle.SUSPECT)

UNMATCHED = "<unmatched>"  # one label for every path no route knows, so scanners add no series


class RequestMetrics:
    """ASGI middleware: a count and a latency per method, route template and status."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        # In multiprocess mode the values live in files that the registry's MultiProcessCollector
        # sums; registered here as well, this process's share would be counted twice.
        own = None if _multiprocess() else registry
        self.requests = Counter(
            "nst_http_requests",
            "HTTP requests answered by this API server",
            ["method", "route", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "nst_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response body, in this API server",
            ["method", "route"],
            registry=own,
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
        now = utcnow()
        with get_session_factory()() as session:
            per_job_state = session.execute(
                select(
                    Shard.job_id,
                    Shard.state,
                    func.count(),
                    func.count().filter(Shard.attempts > 0),
                    func.coalesce(func.sum(Shard.items_done), 0),
                    func.coalesce(func.sum(Shard.attempts), 0),
                    func.coalesce(func.sum(Shard.reaped_count), 0),
                    func.coalesce(func.sum(Shard.lease_expiries), 0),
                    # the reaper's own test for a worker that died (service.lifecycle.reap)
                    func.count().filter(or_(Shard.lease_expires_at.is_(None), Shard.lease_expires_at < now)),
                    func.min(Shard.enqueued_at),
                ).group_by(Shard.job_id, Shard.state)
            ).all()
            jobs = session.execute(select(Job.id, Job.shards_total, Job.cancelled_at)).all()
            # Item errors are rare beside labels, and transient ones are deleted when an attempt
            # reads the item again, so this is a gauge counted over the errors table itself.
            errors = Tally(
                dict(session.execute(select(ItemError.kind, func.count()).group_by(ItemError.kind)).all())
            )
            workers = Tally(status.state for status in list_workers(session, now=now))
        shards, by_job, totals = Tally(), {}, Tally()
        oldest_queued = None
        for job_id, state, count, claimed, done, tries, reaped, expiries, lapsed, enqueued in per_job_state:
            shards[state] += count
            totals.update(labels=done, attempts=tries, reaped=reaped, expiries=expiries)
            if state == ShardState.RUNNING:
                totals["lapsed"] += lapsed
            if state == ShardState.QUEUED and enqueued is not None:
                oldest_queued = min(oldest_queued or enqueued, enqueued)
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
        yield _by(
            "nst_jobs", "Labeling jobs by state (derived from their shards)", "state", job_states, JobState
        )
        yield _by("nst_shards", "Shards of every job by state", "state", shards, ShardState)
        yield CounterMetricFamily(
            "nst_labels_written", "Labels committed by the workers", value=totals["labels"]
        )
        yield CounterMetricFamily(
            "nst_shard_attempts",
            "Times a worker claimed a shard (a retry or redelivery adds one)",
            value=totals["attempts"],
        )
        yield CounterMetricFamily(
            "nst_shard_reenqueues",
            "Shards the reaper sent again: lease expired (worker died) or message never claimed",
            value=totals["reaped"],
        )
        yield CounterMetricFamily(
            "nst_shard_lease_expiries",
            "Leases that lapsed on a running shard (its worker died or stalled), as the reaper found them",
            value=totals["expiries"],
        )
        yield GaugeMetricFamily(
            "nst_shard_leases_expired",
            "Running shards whose lease lapsed, waiting for the reaper to take them back",
            value=totals["lapsed"],
        )
        age = (now - oldest_queued).total_seconds() if oldest_queued else 0.0
        yield GaugeMetricFamily(
            "nst_oldest_queued_shard_seconds",
            "Time since the longest-waiting queued shard was sent",
            value=age,
        )
        yield _by("nst_item_errors", "Items that could not be labeled, by kind", "kind", errors, ERROR_KINDS)
        yield _by(
            "nst_workers",
            "Worker processes heard from in the last day, by state (from their own reports)",
            "state",
            workers,
            WorkerState,
        )


def _by(name: str, documentation: str, label: str, counts: Tally, values) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for value in values:  # every value, zeros included, so a rule sees 0 rather than no series
        family.add_metric([str(value)], counts[value])
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
    if _multiprocess():
        MultiProcessCollector(registry)
    return registry


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
