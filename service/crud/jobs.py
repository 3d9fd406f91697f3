"""Labeling jobs, their shards and their labels: data access only, no HTTP.

A job's state and counters are derived from its shards on every read. A shard's counters grow
in SQL by what each commit really inserted and are recounted exactly when it ends
(workers/labeling.py), so copies of a shard running at once never count an item twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.models import Item, ItemError, Job, Label, Shard, utcnow
from service.pagination import cursor_page, offset_page

UNFINISHED = ("queued", "running")


@dataclass
class JobProgress:
    state: str
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
    shard_size = options["shard_size"]
    bounds = [(s, min(s + shard_size, items_total)) for s in range(0, items_total, shard_size)]
    job = Job(
        teacher_id=teacher_id,
        dataset_id=dataset_id,
        items_total=items_total,
        num_classes=num_classes,
        shards_total=len(bounds),
        **options,
    )
    session.add(job)
    session.flush()
    shards = [
        Shard(
            job_id=job.id,
            index=i,
            start_ordinal=s,
            end_ordinal=e,
            state="queued",
            items_done=0,
            items_failed=0,
            attempts=0,
        )
        for i, (s, e) in enumerate(bounds)
    ]
    session.add_all(shards)
    session.flush()
    return job, shards


def progress(session: Session, *, job: Job, now: datetime | None = None) -> JobProgress:
    row = session.execute(
        select(
            func.coalesce(func.sum(Shard.items_done), 0),
            func.coalesce(func.sum(Shard.items_failed), 0),
            func.count().filter(Shard.state == "succeeded"),
            func.count().filter(Shard.state == "failed"),
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
    if shards_done == job.shards_total:
        state = "succeeded"
    elif job.cancelled_at is not None:
        state = "cancelled"
    elif shards_failed:
        state = "failed"
    elif started:
        state = "running"
    else:
        state = "queued"
    finished_at = None
    if state == "succeeded":
        finished_at = last_finished
    elif state in ("cancelled", "failed"):
        finished_at = job.cancelled_at or last_finished
    throughput = eta = None
    if started_at is not None:
        elapsed = ((finished_at or now or utcnow()) - started_at).total_seconds()
        if elapsed > 0 and done + failed > 0:
            throughput = (done + failed) / elapsed
            if state in UNFINISHED:
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


def cancel(session: Session, *, job: Job) -> None:
    job.cancelled_at = utcnow()
    # Queued shards are settled now; a running one stops at its next commit (the worker checks).
    session.execute(
        update(Shard)
        .where(Shard.job_id == job.id, Shard.state == "queued")
        .values(state="cancelled", finished_at=job.cancelled_at)
    )


def unfinished_shard_ids(session: Session, *, job_id: int) -> list[int]:
    return list(
        session.scalars(
            select(Shard.id)
            .where(Shard.job_id == job_id, Shard.state.in_(UNFINISHED + ("failed",)))
            .order_by(Shard.index)
        )
    )


def reset_failed_shards(session: Session, *, job_id: int) -> None:
    session.execute(
        update(Shard)
        .where(Shard.job_id == job_id, Shard.state == "failed")
        .values(state="queued", error=None, finished_at=None)
    )


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
