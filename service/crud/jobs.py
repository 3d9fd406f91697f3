"""Labeling jobs, their shards and their labels: data access only, no HTTP.

A job's state and counters are derived from its shards on every read (its state by
``service.lifecycle``, which also makes every change of state). A shard's counters grow in SQL by
what each commit really inserted and are recounted exactly when it ends (workers/label_writes.py),
so copies of a shard running at once never count an item twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import delete, exists, func, select, union_all
from sqlalchemy.orm import Session

from nst.config import get_settings
from nst.states import UNFINISHED_SHARD_STATES, JobState, ShardState
from service import lifecycle
from service.crud import workers
from service.models import Item, ItemError, Job, Label, Shard, recorded_names, utcnow
from service.pagination import cursor_page, offset_page


@dataclass
class JobProgress:
    state: JobState
    items_done: int
    items_failed: int
    shards_done: int
    shards_failed: int
    errors: list[str]
    started_at: datetime | None
    finished_at: datetime | None
    throughput: float | None
    eta_s: float | None
    inference_used: list[str]  # the modes its shards were labeled in, so far
    worker_idle_s: float | None  # see _worker_idle_s; None once the job has ended
    no_worker_online: bool = False  # asked only of a job idle for NO_WORKER_AFTER_S or more

    @property
    def waiting_for_worker(self) -> bool:
        idle = self.worker_idle_s
        if idle is None:
            return False
        return idle >= STALLED_AFTER_S or (self.no_worker_online and idle >= NO_WORKER_AFTER_S)


# A running job's ETA follows its recent pace: the items of its last PACE_SHARDS finished shards
# over the time since the shard before them finished. The whole job's average would carry an
# outage (no worker for an hour) in every later ETA; a window of shards, not of minutes, holds
# enough items at any speed.
PACE_SHARDS = 8
# A job in progress that no worker has touched for this long is shown as waiting for one: a
# worker renews a running shard's lease every quarter of NST_LEASE_S (5 s by default).
STALLED_AFTER_S = 60.0
# With no worker online (service.crud.workers) a job waits for one sooner: nothing will touch it.
# The grace covers a claim's round trip from a worker that started as the job was sent.
NO_WORKER_AFTER_S = 10.0


def create_job(
    session: Session, *, teacher_id: str, dataset_id: int, items_total: int, num_classes: int, options: dict
) -> tuple[Job, list[Shard]]:
    job = Job(
        teacher_id=teacher_id,
        dataset_id=dataset_id,
        items_total=items_total,
        num_classes=num_classes,
        shards_total=len(range(0, items_total, options["shard_size"])),
        **options,
    )
    session.add(job)
    session.flush()
    return job, lifecycle.create_shards(session, job=job)


def progress_of(
    session: Session, jobs: Sequence[Job], *, now: datetime | None = None
) -> dict[int, JobProgress]:
    """Each job's progress, by job ID, in four queries however many jobs: a list page costs
    what one job does (the fourth, its recent pace, is asked for unfinished jobs only)."""
    ids = [job.id for job in jobs]
    if not ids:
        return {}
    totals = {
        row[0]: row[1:]
        for row in session.execute(
            select(
                Shard.job_id,
                func.coalesce(func.sum(Shard.items_done), 0),
                func.coalesce(func.sum(Shard.items_failed), 0),
                func.count().filter(Shard.state == ShardState.SUCCEEDED),
                func.count().filter(Shard.state == ShardState.FAILED),
                func.count().filter(Shard.attempts > 0),
                func.min(Shard.started_at),
                func.max(Shard.finished_at),
                func.max(Shard.started_at),
                func.max(Shard.lease_expires_at),
                func.max(Shard.enqueued_at),
            )
            .where(Shard.job_id.in_(ids))
            .group_by(Shard.job_id)
        )
    }
    errors: dict[int, list[str]] = {job_id: [] for job_id in ids}
    first = (
        select(
            Shard.job_id,
            Shard.error,
            func.row_number().over(partition_by=Shard.job_id, order_by=Shard.index).label("n"),
        )
        .where(Shard.job_id.in_(ids), Shard.error.is_not(None))
        .subquery()
    )
    for job_id, error in session.execute(
        select(first.c.job_id, first.c.error).where(first.c.n <= 5).order_by(first.c.job_id, first.c.n)
    ):
        errors[job_id].append(error)
    modes: dict[int, set[str]] = {job_id: set() for job_id in ids}
    for job_id, recorded in session.execute(
        select(Shard.job_id, Shard.inference)
        .where(Shard.job_id.in_(ids), Shard.inference.is_not(None))
        .distinct()
    ):
        modes[job_id].update(recorded_names(recorded))
    empty = (0, 0, 0, 0, 0, None, None, None, None, None)  # a job without shards (none of its items to label)
    states = {job.id: _state(job, totals.get(job.id, empty)) for job in jobs}
    paces = _recent_finishes(session, [i for i, state in states.items() if state in _IN_PROGRESS])
    found = {
        job.id: _progress(
            job,
            states[job.id],
            totals.get(job.id, empty),
            errors[job.id],
            sorted(modes[job.id]),
            paces.get(job.id, []),
            now,
        )
        for job in jobs
    }
    idle = [p for p in found.values() if NO_WORKER_AFTER_S <= (p.worker_idle_s or 0) < STALLED_AFTER_S]
    if idle and not workers.any_online(session, now=now):
        for p in idle:
            p.no_worker_online = True
    return found


_IN_PROGRESS = (JobState.QUEUED, JobState.RUNNING)  # the states with an ETA


def _state(job: Job, totals) -> JobState:
    _, _, shards_done, shards_failed, started, *_ = totals
    return lifecycle.job_state(
        job, shards_done=shards_done, shards_failed=shards_failed, shards_started=started
    )


def _recent_finishes(session: Session, ids: list[int]) -> dict[int, list[tuple[datetime, int]]]:
    """Per job, its last ``PACE_SHARDS + 1`` finished shards as (finished_at, items), latest
    first: one statement of one top-N scan per job (a window over every finished shard would
    sort them all, on every read of a long job)."""
    if not ids:
        return {}
    latest = [
        select(Shard.job_id, Shard.finished_at, Shard.items_done + Shard.items_failed)
        .where(
            Shard.job_id == job_id,
            Shard.state.in_([ShardState.SUCCEEDED, ShardState.FAILED]),
            Shard.finished_at.is_not(None),
        )
        .order_by(Shard.finished_at.desc(), Shard.id.desc())
        .limit(PACE_SHARDS + 1)
        .subquery()
        for job_id in ids
    ]
    # Each a subquery of its own: SQLite allows no ORDER BY or LIMIT in a UNION's parts.
    statement = union_all(*(select(*part.c) for part in latest))
    finishes: dict[int, list[tuple[datetime, int]]] = {}
    for job_id, finished_at, items in session.execute(statement):
        finishes.setdefault(job_id, []).append((finished_at, items))
    for rows in finishes.values():
        rows.sort(key=lambda row: row[0], reverse=True)
    return finishes


def _pace(done: int, started_at: datetime, finishes: list[tuple[datetime, int]], until: datetime) -> float:
    """Items a second lately: over the last ``PACE_SHARDS`` finished shards once more than that
    many have finished, before that over the whole job so far."""
    if len(finishes) > PACE_SHARDS:
        since = finishes[PACE_SHARDS][0]
        items = sum(items for _, items in finishes[:PACE_SHARDS])
    else:
        since, items = started_at, done
    elapsed = (until - since).total_seconds()
    return items / elapsed if elapsed > 0 else 0.0


def progress(session: Session, *, job: Job, now: datetime | None = None) -> JobProgress:
    return progress_of(session, [job], now=now)[job.id]


def _progress(
    job: Job,
    state: JobState,
    totals,
    errors: list[str],
    modes: list[str],
    finishes: list,
    now: datetime | None,
) -> JobProgress:
    done, failed, shards_done, shards_failed, _, started_at, last_finished, *activity = totals
    finished_at = None
    if state == JobState.SUCCEEDED:
        finished_at = last_finished
    elif state in (JobState.CANCELLED, JobState.FAILED):
        finished_at = job.cancelled_at or last_finished
    throughput = eta = idle = None
    until = finished_at or now or utcnow()
    if state in _IN_PROGRESS:
        idle = _worker_idle_s(job, last_finished, *activity, until)
    if started_at is not None:
        elapsed = (until - started_at).total_seconds()
        if elapsed > 0 and done + failed > 0:
            throughput = (done + failed) / elapsed
            pace = _pace(done + failed, started_at, finishes, until)
            if state in _IN_PROGRESS and pace > 0:
                eta = (job.items_total - done - failed) / pace
    return JobProgress(
        state,
        int(done),
        int(failed),
        int(shards_done),
        int(shards_failed),
        errors,
        started_at,
        finished_at,
        throughput,
        eta,
        modes,
        idle,
    )


def _worker_idle_s(
    job: Job,
    last_finished: datetime | None,
    last_claimed: datetime | None,
    last_lease: datetime | None,
    last_sent: datetime | None,
    until: datetime,
) -> float:
    """Seconds since a worker last claimed, renewed or finished one of the job's shards, or since
    its shards were last sent (created, resumed, sent again by a reaper); 0 while one holds a
    live lease. It also counts while the workers are busy with other jobs' shards."""
    if last_lease is not None and last_lease > until:
        return 0.0
    renewed = None if last_lease is None else last_lease - timedelta(seconds=get_settings().lease_s)
    moments = [t for t in (last_finished, last_claimed, renewed, last_sent, job.created_at) if t is not None]
    return max(0.0, (until - max(moments)).total_seconds())


def delete_job(session: Session, *, job_id: int) -> bool:
    """Delete the job with its shards, labels, label bins and item errors (their keys cascade),
    unless a shard of it is queued or running: False then. One statement checks and deletes, so
    no request in between sees a job half gone; a shard resumed as it runs goes with the job, and
    its message finds no shard (a worker drops it). A manifest built from the job meanwhile
    makes the statement fail (IntegrityError)."""
    unsettled = exists().where(Shard.job_id == job_id, Shard.state.in_(UNFINISHED_SHARD_STATES))
    deleted = session.execute(delete(Job).where(Job.id == job_id, ~unsettled)).rowcount == 1
    if deleted:
        lifecycle.log_event("job.deleted", job=job_id)
    return deleted


def list_jobs(
    session: Session, *, offset: int, limit: int, teacher_id: str | None = None, dataset_id: int | None = None
) -> tuple[list[Job], int]:
    query = select(Job)
    if teacher_id is not None:
        query = query.where(Job.teacher_id == teacher_id)
    if dataset_id is not None:
        query = query.where(Job.dataset_id == dataset_id)
    return offset_page(session, query, order_by=[Job.id], offset=offset, limit=limit)


def shards_page(
    session: Session, *, job_id: int, states: Sequence[ShardState], cursor: int | None, limit: int
) -> tuple[list[Shard], int | None, int]:
    """A job's shards in index order (only those in ``states``, unless empty), the next cursor (a
    shard index) and how many match in all: a job at scale has hundreds of thousands."""
    query = select(Shard).where(Shard.job_id == job_id)
    if states:
        query = query.where(Shard.state.in_(states))
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows, next_cursor = cursor_page(session, query, key=Shard.index, cursor=cursor, limit=limit)
    return [shard for (shard,) in rows], next_cursor, count


# --- labels -----------------------------------------------------------------------------------


def decode_distribution(label: Label) -> tuple[list[float], list[int] | None]:
    probs = np.frombuffer(label.probs, dtype=np.float16).astype(np.float32).tolist()
    top = None
    if label.top_indices is not None:
        top = np.frombuffer(label.top_indices, dtype=np.int32).tolist()
    return probs, top


def labels_page(
    session: Session, *, job_id: int, cursor: int | None, limit: int
) -> tuple[list[tuple[Label, str]], int | None]:
    """Labels in item order, with each item's URI; the cursor is the next item ID."""
    query = select(Label, Item.uri).join(Item, Item.id == Label.item_id).where(Label.job_id == job_id)
    return cursor_page(session, query, key=Label.item_id, cursor=cursor, limit=limit)


def errors_page(
    session: Session, *, job_id: int, cursor: int | None, limit: int
) -> tuple[list[tuple[ItemError, str]], int | None, int]:
    """A job's item errors in item order with each item's file, the next cursor and how many
    there are in all."""
    query = (
        select(ItemError, Item.uri).join(Item, Item.id == ItemError.item_id).where(ItemError.job_id == job_id)
    )
    count = session.scalar(select(func.count()).where(ItemError.job_id == job_id)) or 0
    return *cursor_page(session, query, key=ItemError.item_id, cursor=cursor, limit=limit), count
