"""A shard's database side: the items it still has to label, and its labels, item errors and
progress written in transactions of about ``commit_rows`` rows.

Every write is idempotent, so a crash loses at most one uncommitted transaction's work and a
rerun (redelivery, retry, resume) labels only what is missing. State changes go through
``service.lifecycle``.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from nst.states import ShardState
from service.core.db import session_scope
from service.lifecycle import PERMANENT, SUSPECT, TRANSIENT, ShardResult, stop_shard, succeed_shard
from service.models import Item, ItemError, Job, Label, Shard

DIED_ONCE = "the worker died while reading or labeling this image; it is tried once more"
DIED_TWICE = "the worker died twice while reading or labeling this image"


def _in_shard(shard: Shard, job: Job):
    return select(Item.id).where(
        Item.dataset_id == job.dataset_id,
        Item.ordinal >= shard.start_ordinal,
        Item.ordinal < shard.end_ordinal,
    )


def pending_items(session: Session, shard: Shard, job: Job) -> list[tuple[int, str]]:
    """The shard's items with neither a label nor an item error (a suspect is tried again), as
    ``(item_id, uri)``."""
    done = select(Label.item_id).where(Label.job_id == job.id)
    failed = select(ItemError.item_id).where(ItemError.job_id == job.id, ItemError.kind != SUSPECT)
    query = (
        select(Item.id, Item.uri)
        .where(
            Item.dataset_id == job.dataset_id,
            Item.ordinal >= shard.start_ordinal,
            Item.ordinal < shard.end_ordinal,
            Item.id.not_in(done),
            Item.id.not_in(failed),
        )
        .order_by(Item.ordinal)
    )
    return [tuple(row) for row in session.execute(query)]


def suspects(session: Session, shard: Shard, job: Job) -> set[int]:
    """The shard's items a worker died on once (``mark_suspect``)."""
    query = select(ItemError.item_id).where(
        ItemError.job_id == job.id, ItemError.kind == SUSPECT, ItemError.item_id.in_(_in_shard(shard, job))
    )
    return set(session.scalars(query))


def mark_suspect(job_id: int, item_id: int, *, again: bool) -> None:
    """Committed before a careful pass reads the item, and removed by the commit of its label
    (``commit_labels``' ``cleared``): if the worker dies in between, the mark stays. A first mark
    lets the next attempt try the item once more (a kill from outside lands on some item too);
    marking it ``again`` makes it a permanent item error, which that attempt's death leaves."""
    with session_scope() as session:
        if again:
            session.execute(
                update(ItemError)
                .where(ItemError.job_id == job_id, ItemError.item_id == item_id, ItemError.kind == SUSPECT)
                .values(kind=PERMANENT, message=DIED_TWICE)
                .execution_options(synchronize_session=False)
            )
        else:
            row = {"job_id": job_id, "item_id": item_id, "message": DIED_ONCE, "kind": SUSPECT}
            insert_ignoring_duplicates(session, ItemError, [row])


def unmark_suspect(job_id: int, item_id: int, *, again: bool) -> None:
    """Take back ``mark_suspect``'s mark of an item whose pass ended by an error, not a death:
    a first mark goes, a second becomes the first again."""
    with session_scope() as session:
        if again:
            session.execute(
                update(ItemError)
                .where(
                    ItemError.job_id == job_id, ItemError.item_id == item_id, ItemError.message == DIED_TWICE
                )
                .values(kind=SUSPECT, message=DIED_ONCE)
                .execution_options(synchronize_session=False)
            )
        else:
            session.execute(
                delete(ItemError)
                .where(ItemError.job_id == job_id, ItemError.item_id == item_id, ItemError.kind == SUSPECT)
                .execution_options(synchronize_session=False)
            )


def forget_transient_errors(session: Session, shard: Shard, job: Job) -> None:
    """Delete the shard's transient item errors (a read that failed in an earlier attempt), so
    this attempt reads those items again; the progress forgets them too."""
    forgotten = session.execute(
        delete(ItemError)
        .where(
            ItemError.job_id == job.id,
            ItemError.kind == TRANSIENT,
            ItemError.item_id.in_(_in_shard(shard, job)),
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if forgotten:
        shard.items_failed = max(0, shard.items_failed - forgotten)


def insert_ignoring_duplicates(session: Session, model, rows: list[dict]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING on the primary key, so a rerun writes no duplicates;
    returns how many rows were new (a conflict inserts, and counts, nothing)."""
    if not rows:
        return 0
    table = model.__table__
    if session.get_bind().dialect.name == "postgresql":
        return _insert_unnest(session, table, rows)
    # SQLite: a Core multi-row insert (the ORM's bulk path costs more than the write).
    statement = sqlite.insert(table).on_conflict_do_nothing().returning(table.c.item_id)
    return len(session.execute(statement, rows).all())


def _insert_unnest(session: Session, table, rows: list[dict]) -> int:
    """PostgreSQL: the whole batch as one array per column, in one short statement.

    A multi-row VALUES statement has a placeholder per value, and psycopg parses a statement
    that long afresh on every call (measured: 60% of the write time at 1,024 rows per batch);
    this one has a placeholder per column and is parsed once. The arrays travel in binary
    (``%(name)b``): as text, psycopg quoted every element with a regular expression in Python,
    and bench/label_write_rate.py measured 75,000-79,000 labels/s that way against
    100,000-110,000 in binary.
    """
    columns = list(rows[0])
    dialect = session.get_bind().dialect
    arrays = ", ".join(f"%({c})b::{table.c[c].type.compile(dialect=dialect)}[]" for c in columns)
    sql = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({arrays}) "
        "ON CONFLICT DO NOTHING"
    )
    params = {c: [row[c] for row in rows] for c in columns}
    return session.connection().exec_driver_sql(sql, params).rowcount


class ShardWriter:
    """Buffers a shard's labels and item errors and commits them in transactions of about
    ``commit_rows`` rows, or every ``commit_seconds``, whichever comes first.

    One commit per small model batch made the database the bottleneck
    (bench/label_write_rate.py), and a crash loses at most one such transaction's work, which
    the redelivered shard redoes.
    """

    def __init__(self, shard_id: int, job: Job, *, commit_rows: int, commit_seconds: float):
        self.shard_id, self.job = shard_id, job
        self.commit_rows, self.commit_seconds = commit_rows, commit_seconds
        self.rows: list[dict] = []
        self.bad: list[dict] = []
        self.last_commit = time.monotonic()

    def add(self, rows: list[dict], bad: list[dict]) -> ShardResult | None:
        """Buffer a batch; commit when due. A result means the job was cancelled: stop."""
        self.rows += rows
        self.bad += bad
        due = len(self.rows) + len(self.bad) >= self.commit_rows
        if due or time.monotonic() - self.last_commit >= self.commit_seconds:
            return self.flush()
        return None

    def flush(self) -> ShardResult | None:
        if not self.rows and not self.bad:
            return None
        stopped = commit_labels(self.shard_id, self.job, self.rows, self.bad)
        self.rows, self.bad, self.last_commit = [], [], time.monotonic()
        return stopped

    def finish(self) -> ShardResult:
        """The buffered rest and the shard's success in one transaction (one commit fewer a
        shard on the labeling loop's path); cancelled instead if the job was cancelled."""
        return commit_labels(self.shard_id, self.job, self.rows, self.bad, last=True)


def commit_labels(
    shard_id: int,
    job: Job,
    rows: list[dict],
    bad: list[dict],
    *,
    last: bool = False,
    cleared: int | None = None,
) -> ShardResult | None:
    """Write labels and the shard's progress in one transaction; stop if the job was cancelled.
    With ``last``, the shard succeeds in the same transaction (``succeed_shard``); ``cleared``
    is an item whose ``mark_suspect`` mark this commit's outcome replaces.

    Progress grows by what the inserts really added, in SQL (``items_done + n``), so a
    redelivered or concurrently running copy of the shard never counts an item twice; counting
    the whole shard again instead cost a join over its items with every batch.
    """
    with session_scope() as session:
        # FOR SHARE (PostgreSQL): a cancellation's UPDATE waits for this commit, and every later
        # commit sees it; without the lock one that committed in between was missed.
        if cleared is not None:  # its outcome, or the job's cancellation, replaces the mark
            marked = (ItemError.kind == SUSPECT) | (ItemError.message == DIED_TWICE)
            session.execute(
                delete(ItemError)
                .where(ItemError.job_id == job.id, ItemError.item_id == cleared, marked)
                .execution_options(synchronize_session=False)
            )
        cancelled = select(Job.cancelled_at).where(Job.id == job.id).with_for_update(read=True)
        if session.scalar(cancelled) is not None:
            return stop_shard(session, shard_id=shard_id, state=ShardState.CANCELLED)
        added = insert_ignoring_duplicates(session, Label, rows)
        failed = insert_ignoring_duplicates(session, ItemError, bad)
        if last:
            return succeed_shard(session, shard_id=shard_id, job=job)
        # No state here: a copy that lags behind must not reopen a shard another copy finished.
        session.execute(
            update(Shard)
            .where(Shard.id == shard_id)
            .values(items_done=Shard.items_done + added, items_failed=Shard.items_failed + failed)
            .execution_options(synchronize_session=False)
        )
    return None
