"""The one module that changes the state of a labeling job, its shards and a teacher.

A shard::

    queued ──claim──> running ──succeed──> succeeded
      │ ^                │ ├──fail─────────> failed ──resume──> queued
      │ └──reap/release──┘ └──cancel───────> cancelled
      └──cancel (the job's)──────────────> cancelled

Claiming a running or failed shard (a redelivered message) is one attempt more. A running shard
holds a lease that its worker renews while it labels; the reaper (``reap``) queues again a shard
whose lease lapsed (its worker died) or one queued long ago whose message was lost (no shard
runs, or the first-in first-out queue has passed it by), and fails it once it has had
``shard_max_attempts``; so does a claim past them (a worker that dies on the shard has its
message redelivered at once). A worker releases its shard back to queued when a later attempt
must retry some of its items (transient read errors). A claim cancels the shard instead if its
job was cancelled, and fails it if its teacher is not ready; a running shard sees its job's
cancellation at its next commit. Succeeded and cancelled are final: a late copy of the shard
(redelivery, retry) leaves them as they are.

A job's state is never stored: ``job_state`` derives it from its shards and its cancellation,
the first that holds of succeeded (every shard), cancelled, failed (a shard), running (a shard
was claimed) and queued.

A teacher: pending (registered) ──validated──> ready | invalid; an invalid one may be validated
again.

Every function here works inside the caller's transaction; the caller commits. Every state
change of a job or shard is logged as one line on the ``nst.lifecycle`` logger (JSON with
``NST_LOG_JSON=1``), so a fault can be followed from the log alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from nst.config import get_settings
from nst.states import UNFINISHED_SHARD_STATES, JobState, ShardState, TeacherStatus
from service.models import Item, ItemError, Job, Label, Shard, Teacher, utcnow

_FINAL = (ShardState.SUCCEEDED, ShardState.CANCELLED)
# The kinds of an item error. A suspect is an image a worker was reading or labeling when it
# died (``workers.labeling``): it is tried once more, and a second death makes it permanent.
PERMANENT, TRANSIENT, SUSPECT = "permanent", "transient", "suspect"

logger = logging.getLogger("nst.lifecycle")
logger.setLevel(logging.INFO)


def log_event(event: str, **fields) -> None:
    """One line per state change: ``event key=value ...``, or a JSON object with NST_LOG_JSON."""
    if not logger.handlers and not logging.getLogger().handlers:
        # A process that configured no logging (uvicorn leaves the root bare) still gets the lines.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
    if get_settings().log_json:
        logger.info(json.dumps({"event": event, "at": utcnow().isoformat(), **fields}, default=str))
    else:
        logger.info("%s %s", event, " ".join(f"{key}={value}" for key, value in fields.items()))


@dataclass
class ShardResult:
    """How a shard ended, or ``missing`` for a shard that no longer exists."""

    state: str
    labeled: int = 0
    failed: int = 0


# --- jobs ----------------------------------------------------------------------------------------


def create_shards(session: Session, *, job: Job) -> list[Shard]:
    """The job's items cut into shards of ``job.shard_size``, each queued."""
    size, total, now = job.shard_size, job.items_total, utcnow()
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
            reaped_count=0,
            lease_expiries=0,
            enqueued_at=now,
        )
        for i, start in enumerate(range(0, total, size))
    ]
    session.add_all(shards)
    session.flush()
    log_event("job.queued", job=job.id, shards=len(shards), items=total)
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
    log_event("job.cancelled", job=job.id)


def resume_job(session: Session, *, job_id: int) -> list[int]:
    """Queue the job's failed shards again, their attempts counted afresh; return every shard to
    enqueue (queued, running or failed), in order."""
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
    # A person resumed them: their attempts count afresh, or the first claim would meet the cap.
    session.execute(
        update(Shard).where(Shard.id.in_(shard_ids)).values(enqueued_at=utcnow(), attempts=0, reaped_count=0)
    )
    log_event("job.resumed", job=job_id, shards_sent=len(shard_ids))
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
    max_attempts = get_settings().shard_max_attempts
    if shard.attempts >= max_attempts:
        # A worker that dies on this shard has its message redelivered at once, so the lease
        # never lapses and the reaper never counts: the claim is what ends the loop. While a
        # lease is live, though, its holder may be labeling still: this copy leaves the shard to
        # it, and to the reaper once the lease lapses, if its holder is dead.
        if shard.state == ShardState.RUNNING and (shard.lease_expires_at or utcnow()) > utcnow():
            log_event(
                "shard.left", job=job.id, shard=shard.id, index=shard.index, reason="a copy holds its lease"
            )
            return _result(shard)
        reason = (
            f"claimed {shard.attempts} times without finishing (NST_SHARD_MAX_ATTEMPTS={max_attempts}): "
            "its worker died or gave up each time"
        )
        return _settle(shard, ShardState.FAILED, reason)
    if not session.scalar(select(exists().where(Shard.job_id == job.id, Shard.started_at.is_not(None)))):
        log_event("job.running", job=job.id)
    # Counted in SQL: SQLite ignores FOR UPDATE, so two copies claiming at once both read the
    # same count, and an increment made in Python would lose one of them.
    attempt = shard.attempts + 1  # for the log line only
    shard.state, shard.attempts, shard.error = ShardState.RUNNING, Shard.attempts + 1, None
    shard.started_at = shard.started_at or utcnow()
    shard.lease_expires_at = utcnow() + timedelta(seconds=get_settings().lease_s)
    log_event("shard.running", job=job.id, shard=shard.id, index=shard.index, attempt=attempt)
    return None


def renew_lease(session: Session, *, shard_id: int, lease_s: float) -> None:
    """Extend a running shard's lease: its worker is alive. A shard the reaper took back stays
    queued; its new delivery claims it again."""
    session.execute(
        update(Shard)
        .where(Shard.id == shard_id, Shard.state == ShardState.RUNNING)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )


def release_shard(session: Session, *, shard_id: int, reason: str) -> None:
    """Put a running shard back to queued for a later attempt (its message is sent again by a
    Celery retry); it counts as just sent, so the reaper leaves it alone meanwhile."""
    shard = session.get(Shard, shard_id, with_for_update=True)
    if shard is None or shard.state != ShardState.RUNNING:
        return
    shard.state, shard.lease_expires_at, shard.enqueued_at = ShardState.QUEUED, None, utcnow()
    log_event("shard.released", job=shard.job_id, shard=shard.id, index=shard.index, reason=reason)


def reap(session: Session, *, unclaimed_s: float | None, max_attempts: int) -> list[int]:
    """Take back the shards nobody is working on; return those to send again.

    A running shard whose lease lapsed lost its worker. A queued shard sent ``unclaimed_s`` ago
    (None: not checked) lost its message (a broker restarted empty, a task that gave up while
    the database was down, a pool process killed holding it) when ``_lost_messages`` says so.
    Either is queued again with one reap more, or failed, with the reason, once it has had
    ``max_attempts`` claims or sends. Cancelled jobs' shards are settled instead. Locked rows are
    skipped: another reaper, or the shard's own worker, holds them right now.
    """
    now = utcnow()
    expired = _lockable(
        select(Shard).where(
            Shard.state == ShardState.RUNNING,
            or_(
                Shard.lease_expires_at.is_(None),
                Shard.lease_expires_at < now,
            ),
        )
    )
    stale: list[Shard] = []
    if unclaimed_s is not None:
        stale = _lost_messages(session, now=now, unclaimed_s=unclaimed_s)
    resend = []
    for shard, why in [(s, "lease expired") for s in session.scalars(expired)] + [
        (s, "never claimed") for s in stale
    ]:
        job = session.get(Job, shard.job_id)
        if why == "lease expired":
            shard.lease_expiries += 1
        if job.cancelled_at is not None:
            _settle(shard, ShardState.CANCELLED)
        elif max(shard.attempts, shard.reaped_count) >= max_attempts:
            reason = (
                f"{why} after {shard.attempts} attempts and {shard.reaped_count} sends by the "
                f"reaper (NST_SHARD_MAX_ATTEMPTS={max_attempts})"
            )
            _settle(shard, ShardState.FAILED, reason)
        else:
            shard.state, shard.lease_expires_at, shard.enqueued_at = ShardState.QUEUED, None, now
            shard.reaped_count += 1
            resend.append(shard.id)
            log_event(
                "shard.reaped",
                job=job.id,
                shard=shard.id,
                index=shard.index,
                reason=why,
                attempts=shard.attempts,
                reaped=shard.reaped_count,
            )
    return resend


def _lost_messages(session: Session, *, now: datetime, unclaimed_s: float) -> list[Shard]:
    """The queued shards sent ``unclaimed_s`` ago whose message is gone.

    - When no shard holds a live lease and none finished for ``unclaimed_s``, every one of them:
      nothing is moving, so nothing is on its way to them.
    - While work goes on, a shard never claimed, once a shard sent ``unclaimed_s`` after it has
      been claimed: the queue is first in, first out, so its message was handed out before that
      one. Unless a shard sent no later than it still runs: a worker may hold its message,
      prefetched, behind that one. A shard claimed before (released for a retry that is due
      later, or sent again by a reap) waits for the idle rule.

    A message that was only late costs a duplicate delivery, which labels nothing twice.
    """
    since = now - timedelta(seconds=unclaimed_s)
    old_enough = and_(
        Shard.state == ShardState.QUEUED, or_(Shard.enqueued_at.is_(None), Shard.enqueued_at < since)
    )
    if not session.scalar(select(exists().where(old_enough))):
        return []  # the usual case: every sweep of every worker stops here
    live = and_(Shard.state == ShardState.RUNNING, Shard.lease_expires_at >= now)
    busy = or_(exists().where(live), exists().where(Shard.finished_at >= since))
    if not session.scalar(select(busy)):
        return list(session.scalars(_lockable(select(Shard).where(old_enough))))
    newest_claimed_send = session.scalar(
        select(func.max(Shard.enqueued_at)).where(Shard.state.in_((ShardState.RUNNING, ShardState.SUCCEEDED)))
    )
    if newest_claimed_send is None:
        return []
    passed = and_(
        old_enough,
        Shard.attempts == 0,
        Shard.enqueued_at <= newest_claimed_send - timedelta(seconds=unclaimed_s),
    )
    first_live_send = session.scalar(select(func.min(Shard.enqueued_at)).where(live))
    if first_live_send is not None:
        passed = and_(passed, Shard.enqueued_at < first_live_send)
    return list(session.scalars(_lockable(select(Shard).where(passed))))


def _lockable(query):
    # PostgreSQL: rows another transaction holds are skipped, not waited for (SQLite ignores it).
    return query.with_for_update(skip_locked=True).order_by(Shard.id)


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
    if shard.state != ShardState.SUCCEEDED:  # a late copy of a finished shard changes nothing
        log_event(
            "shard.succeeded", job=job.id, shard=shard_id, index=shard.index, labeled=done, failed=failed
        )
        unfinished = exists().where(Shard.job_id == job.id, Shard.state != ShardState.SUCCEEDED)
        if not session.scalar(select(unfinished)):
            log_event("job.succeeded", job=job.id)
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
    shard.lease_expires_at = None
    log_event(f"shard.{state}", job=shard.job_id, shard=shard.id, index=shard.index, error=error)
    if state == ShardState.FAILED:
        log_event("job.failed", job=shard.job_id, shard=shard.id)
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
