"""The one module that changes the state of a labeling job, its shards and a teacher.

A shard::

    queued ──claim──> running ──succeed──> succeeded
      │                  ├──fail─────────> failed ──resume──> queued
      │                  └──cancel───────> cancelled
      └──cancel (the job's)──────────────> cancelled

Claiming a running or failed shard (a redelivered message) is one attempt more. A claim
cancels the shard instead if its job was cancelled, and fails it if its teacher is not ready; a
running shard sees its job's cancellation at its next commit. Succeeded and cancelled are final:
a late copy of the shard (redelivery, retry) leaves them as they are.

A job's state is never stored: ``job_state`` derives it from its shards and its cancellation,
the first that holds of succeeded (every shard), cancelled, failed (a shard), running (a shard
was claimed) and queued.

A teacher: pending (registered) ──validated──> ready | invalid; an invalid one may be validated
again.

Every function here works inside the caller's transaction; the caller commits.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from nst.states import UNFINISHED_SHARD_STATES, JobState, ShardState, TeacherStatus
from service.models import Item, ItemError, Job, Label, Shard, Teacher, utcnow

_FINAL = (ShardState.SUCCEEDED, ShardState.CANCELLED)


@dataclass
class ShardResult:
    """How a shard ended, or ``missing`` for a shard that no longer exists."""

    state: str
    labeled: int = 0
    failed: int = 0


# --- jobs ----------------------------------------------------------------------------------------


def create_shards(session: Session, *, job: Job) -> list[Shard]:
    """The job's items cut into shards of ``job.shard_size``, each queued."""
    size, total = job.shard_size, job.items_total
    shards = [
        Shard(
            job_id=job.id,
            index=i,
            start_ordinal=start,
            end_ordinal=min(start + size, total),
            state=ShardState.QUEUED,
            items_done=0,
            items_failed=0,
            attempts=0,
        )
        for i, start in enumerate(range(0, total, size))
    ]
    session.add_all(shards)
    session.flush()
    return shards


def job_state(job: Job, *, shards_done: int, shards_failed: int, shards_started: int) -> JobState:
    if shards_done == job.shards_total:
        return JobState.SUCCEEDED
    if job.cancelled_at is not None:
        return JobState.CANCELLED
    if shards_failed:
        return JobState.FAILED
    if shards_started:
        return JobState.RUNNING
    return JobState.QUEUED


def cancel_job(session: Session, *, job: Job) -> None:
    job.cancelled_at = utcnow()
    # Queued shards are settled now; a running one stops at its next commit (the worker checks).
    session.execute(
        update(Shard)
        .where(Shard.job_id == job.id, Shard.state == ShardState.QUEUED)
        .values(state=ShardState.CANCELLED, finished_at=job.cancelled_at)
    )


def resume_job(session: Session, *, job_id: int) -> list[int]:
    """Queue the job's failed shards again; return every shard to enqueue (queued, running or
    failed), in order."""
    shard_ids = list(
        session.scalars(
            select(Shard.id)
            .where(Shard.job_id == job_id, Shard.state.in_((*UNFINISHED_SHARD_STATES, ShardState.FAILED)))
            .order_by(Shard.index)
        )
    )
    session.execute(
        update(Shard)
        .where(Shard.job_id == job_id, Shard.state == ShardState.FAILED)
        .values(state=ShardState.QUEUED, error=None, finished_at=None)
    )
    return shard_ids


# --- shards --------------------------------------------------------------------------------------


def claim_shard(session: Session, *, shard_id: int) -> ShardResult | None:
    """Mark the shard running, one attempt more; or, if it must not run, a result: it is gone,
    already final, its job cancelled (it is cancelled now) or its teacher not ready (it fails)."""
    # Locked: a copy of this shard finishing right now is waited for, so its success is seen
    # here and not turned back into running.
    shard = session.get(Shard, shard_id, with_for_update=True)
    if shard is None:
        return ShardResult("missing")
    if shard.state in _FINAL:
        return _result(shard)
    job = session.get(Job, shard.job_id)
    if job.cancelled_at is not None:
        return _settle(shard, ShardState.CANCELLED)
    teacher = session.get(Teacher, job.teacher_id)
    if teacher.status != TeacherStatus.READY:
        reason = f"teacher {teacher.id} is {teacher.status}: {teacher.status_reason}"
        return _settle(shard, ShardState.FAILED, reason)
    shard.state, shard.attempts, shard.error = ShardState.RUNNING, shard.attempts + 1, None
    shard.started_at = shard.started_at or utcnow()
    return None


def succeed_shard(session: Session, *, shard_id: int, job: Job) -> ShardResult:
    """Finish the shard with its progress counted exactly, once, at its end.

    The row lock (PostgreSQL; SQLite has one writer anyway) makes a copy of this shard that is
    committing right now wait, and the count runs inside the UPDATE, so no copy's increment can
    land between the count and the write and be lost. Call it in the transaction of the shard's
    last labels, after their inserts: every transaction takes the label rows before the shard's
    row, so two copies cannot deadlock.
    """
    shard = session.get(Shard, shard_id, with_for_update=True)
    labels, errors = _shard_counts(shard, job)
    done, failed = session.execute(
        update(Shard)
        .where(Shard.id == shard_id)
        .values(
            items_done=labels,
            items_failed=errors,
            state=ShardState.SUCCEEDED,
            error=None,
            finished_at=utcnow(),
        )
        .returning(Shard.items_done, Shard.items_failed)
        .execution_options(synchronize_session=False)
    ).one()
    return ShardResult(ShardState.SUCCEEDED, done, failed)


def stop_shard(
    session: Session, *, shard_id: int, state: ShardState, error: str | None = None
) -> ShardResult:
    """End the shard as failed or cancelled, unless it is gone or already final."""
    # Locked, so a copy finishing the shard right now is waited for and seen, not undone.
    shard = session.get(Shard, shard_id, with_for_update=True)
    if shard is None:
        return ShardResult("missing")
    if shard.state in _FINAL:
        return _result(shard)
    return _settle(shard, state, error)


def _settle(shard: Shard, state: ShardState, error: str | None = None) -> ShardResult:
    shard.state, shard.error, shard.finished_at = state, error, utcnow()
    return _result(shard)


def _result(shard: Shard) -> ShardResult:
    return ShardResult(shard.state, shard.items_done, shard.items_failed)


def _shard_counts(shard: Shard, job: Job):
    """Scalar subqueries: the shard's labels and item errors, counted exactly."""
    in_shard = (
        Item.dataset_id == job.dataset_id,
        Item.ordinal >= shard.start_ordinal,
        Item.ordinal < shard.end_ordinal,
    )

    def count(table):
        return (
            select(func.count())
            .select_from(table)
            .join(Item, Item.id == table.item_id)
            .where(table.job_id == job.id, *in_shard)
            .scalar_subquery()
        )

    return count(Label), count(ItemError)


# --- teachers ------------------------------------------------------------------------------------


def add_teacher(session: Session, *, teacher: Teacher) -> None:
    """A new teacher is pending until a worker has loaded it."""
    teacher.status, teacher.status_reason = TeacherStatus.PENDING, None
    session.add(teacher)
    session.flush()


def set_teacher_status(
    session: Session, *, teacher_id: str, status: TeacherStatus, reason: str | None
) -> None:
    teacher = session.get(Teacher, teacher_id)
    if teacher is not None:
        teacher.status, teacher.status_reason = status, reason
