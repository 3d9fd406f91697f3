"""Worker processes as they report themselves (``workers/heartbeat.py``): data access only, no
HTTP. A worker's state is derived from its last report on every read, like a job's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from nst.states import WorkerState
from service.models import Worker, utcnow

MISSED_BEATS = 3  # a worker silent for this many of its heartbeats is lost
FORGET_AFTER = timedelta(days=1)  # a worker not heard from for this long is no longer listed


@dataclass
class WorkerStatus:
    worker: Worker
    state: WorkerState
    silent_s: float  # seconds since its last report


def report(
    session: Session,
    *,
    name: str,
    pid: int,
    device: str,
    concurrency: int,
    heartbeat_s: float,
    software: dict[str, str] | None = None,
    now=None,
) -> None:
    """Record that the worker process (``name``, ``pid``) is up, and forget long-gone ones."""
    now = now or utcnow()
    seen = {
        "device": device,
        "concurrency": concurrency,
        "heartbeat_s": heartbeat_s,
        "software": software,
        "last_seen_at": now,
    }
    found = session.execute(
        update(Worker).where(Worker.name == name, Worker.pid == pid).values(stopped_at=None, **seen)
    ).rowcount
    if not found:  # its first report (only this process writes its own row: no race)
        session.add(Worker(name=name, pid=pid, started_at=now, **seen))
    session.execute(delete(Worker).where(Worker.last_seen_at < now - FORGET_AFTER))


def report_stopped(session: Session, *, name: str, pid: int, now=None) -> None:
    now = now or utcnow()
    session.execute(
        update(Worker).where(Worker.name == name, Worker.pid == pid).values(stopped_at=now, last_seen_at=now)
    )


def state_of(worker: Worker, now: datetime) -> WorkerState:
    if worker.stopped_at is not None:
        return WorkerState.STOPPED
    if now - worker.last_seen_at > timedelta(seconds=MISSED_BEATS * worker.heartbeat_s):
        return WorkerState.LOST
    return WorkerState.ONLINE


def any_online(session: Session, *, now: datetime | None = None) -> bool:
    return any(s.state == WorkerState.ONLINE for s in list_workers(session, now=now))


def list_workers(session: Session, *, now: datetime | None = None) -> list[WorkerStatus]:
    """Every worker heard from within ``FORGET_AFTER``, online ones first, then by name."""
    now = now or utcnow()
    found = [
        WorkerStatus(w, state_of(w, now), max(0.0, (now - w.last_seen_at).total_seconds()))
        for w in session.scalars(
            select(Worker).where(Worker.last_seen_at >= now - FORGET_AFTER).order_by(Worker.name, Worker.pid)
        )
    ]
    return sorted(found, key=lambda s: s.state != WorkerState.ONLINE)


API = "API"  # how the service itself is named among the workers it is compared with


def software_differences(
    statuses: list[WorkerStatus], api: dict[str, str]
) -> dict[str, dict[str, list[str]]]:
    """Among the API (its software ``api``) and the online workers that report theirs, each
    package run in more than one version: {package: {version: [API or worker names]}}. Workers
    that differ may label the same images differently in the last digits (docs/BENCHMARKS.md),
    and an API that differs from them builds manifests with other code: an operator should know."""
    seen: dict[str, dict[str, list[str]]] = {}
    running = [(API, api)] + [
        (s.worker.name, s.worker.software)
        for s in statuses
        if s.state == WorkerState.ONLINE and s.worker.software
    ]
    for name, software in running:
        for package, installed in software.items():
            seen.setdefault(package, {}).setdefault(installed, []).append(name)
    return {package: versions for package, versions in sorted(seen.items()) if len(versions) > 1}
