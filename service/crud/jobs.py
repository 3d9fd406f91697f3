"""Labeling jobs, their shards and their labels: data access only, no HTTP.

A job's state and counters are derived from its shards on every read (its state by
``service.lifecycle``, which also makes every change of state). A shard's counters grow in SQL by
what each commit really inserted and are recounted exactly when it ends (workers/label_writes.py),
so copies of a shard running at once never count an item twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nst.states import JobState, ShardState
from service import lifecycle
from service.models import Item, ItemError, Job, Label, Shard, utcnow
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


def inference_used(session: Session, *, job: Job) -> list[str]:
    """The inference modes its shards were labeled in, so far."""
    return list(
        session.scalars(
            select(Shard.inference)
            .where(Shard.job_id == job.id, Shard.inference.is_not(None))
            .distinct()
            .order_by(Shard.inference)
        )
    )


def progress(session: Session, *, job: Job, now: datetime | None = None) -> JobProgress:
    row = session.execute(
        select(
            func.coalesce(func.sum(Shard.items_done), 0),
            func.coalesce(func.sum(Shard.items_failed), 0),
            func.count().filter(Shard.state == ShardState.SUCCEEDED),
            func.count().filter(Shard.state == ShardState.FAILED),
            func.count().filter(Shard.attempts > 0),
            func.min(Shard.started_at),
            func.max(Shard.finished_at),
        ).where(Shard.job_id == job.id)
    ).one()
    done, failed, shards_done, shards_failed, started, started_at, last_finished = row
    errors = list(
        session.scalars(
            select(Shard.error)
            .where(Shard.job_id == job.id, Shard.error.is_not(None))
            .order_by(Shard.index)
            .limit(5)
        )
    )
    state = lifecycle.job_state(
        job, shards_done=shards_done, shards_failed=shards_failed, shards_started=started
    )
    finished_at = None
    if state == JobState.SUCCEEDED:
        finished_at = last_finished
    elif state in (JobState.CANCELLED, JobState.FAILED):
        finished_at = job.cancelled_at or last_finished
    throughput = eta = None
    if started_at is not None:
        elapsed = ((finished_at or now or utcnow()) - started_at).total_seconds()
        if elapsed > 0 and done + failed > 0:
            throughput = (done + failed) / elapsed
            if state in (JobState.QUEUED, JobState.RUNNING):
                eta = (job.items_total - done - failed) / throughput
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
    )


def list_jobs(session: Session, *, offset: int, limit: int) -> tuple[list[Job], int]:
    return offset_page(session, select(Job), order_by=[Job.id], offset=offset, limit=limit)


def shards(session: Session, *, job_id: int) -> list[Shard]:
    return list(session.scalars(select(Shard).where(Shard.job_id == job_id).order_by(Shard.index)))


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
) -> tuple[list[tuple[ItemError, str]], int | None]:
    query = (
        select(ItemError, Item.uri).join(Item, Item.id == ItemError.item_id).where(ItemError.job_id == job_id)
    )
    return cursor_page(session, query, key=ItemError.item_id, cursor=cursor, limit=limit)
