"""Label one shard with its job's teacher, un-noised, and store each soft label exactly once.

Plain functions: the Celery task is a thin wrapper, and tests call these without a broker.
Labels commit in transactions of about COMMIT_ROWS rows together with the shard's progress, so
a crash loses at most one uncommitted transaction's work, and a rerun (redelivery, retry,
resume) labels only what is missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from sqlalchemy import func, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session
from torch.utils.data import DataLoader, Sampler, default_collate
from torch.utils.data import Dataset as TorchDataset

from nst.config import get_settings
from service.core.db import session_scope
from service.models import Item, ItemError, Job, Label, Shard, Teacher, utcnow
from workers.teacher_model import ImageFormat, cached_teacher, eval_transform

# Labels are committed in transactions of about this many rows, or at least this often: one
# commit per small model batch made the database the bottleneck (bench/label_write_rate.py),
# and a crash loses at most one such transaction's work, which the redelivered shard redoes.
COMMIT_ROWS = get_settings().commit_rows
COMMIT_SECONDS = get_settings().commit_seconds


@dataclass
class ShardResult:
    state: str
    labeled: int = 0
    failed: int = 0


class _Images(TorchDataset):
    """Decodes the image a key names, ``(item_id, uri, image_format)``: keyed rather than
    indexed, and the key says which teacher's transform applies, so one set of decode processes
    serves every shard of every teacher. An unreadable file becomes an error string."""

    def __getitem__(self, key: tuple[int, str, ImageFormat]):
        item_id, uri, image_format = key
        transform = eval_transform(image_format)  # outside the try: a bad format is no item's fault
        try:
            with Image.open(uri) as image:
                tensor = transform(image.convert(image_format.mode))
            return tensor, item_id, ""
        except Exception as exc:  # any decode failure is recorded on the item
            return torch.zeros(image_format.shape), item_id, f"{type(exc).__name__}: {exc}"[:500]


class _ShardBatches(Sampler):
    """The current shard's keys in decode batches; ``start`` sets them before each pass.

    A shard starts with an empty pipeline: the model waits until one decode process has made a
    whole first batch. So the first batches ramp up (a quarter, a quarter, a half of the batch,
    then whole ones) and the model starts after a quarter of the wait; ``label_shard`` joins
    them back into model batches of the job's size, so what the model sees is unchanged.
    """

    def __init__(self) -> None:
        self.batch_size = 1
        self.keys: list[tuple[int, str]] = []
        self.image_format: ImageFormat | None = None

    def start(self, keys: list[tuple[int, str]], image_format: ImageFormat, batch_size: int) -> None:
        self.keys, self.image_format, self.batch_size = keys, image_format, batch_size

    def sizes(self):
        b = self.batch_size
        yield from (s for s in (b // 4, b // 4, b - 2 * (b // 4)) if s)
        while True:
            yield b

    def __iter__(self):
        start = 0
        for size in self.sizes():
            if start >= len(self.keys):
                return
            # One format object for the whole batch: pickle sends it once, however many keys.
            yield [(item_id, uri, self.image_format) for item_id, uri in self.keys[start : start + size]]
            start += size

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _collate(samples: list) -> tuple[torch.Tensor, list[int], list[str]]:
    """Images stacked into one tensor; item ids and errors kept as plain lists.

    Every tensor a decode process returns costs the labeling loop a file-descriptor hand-over
    (a socket connection) to rebuild its shared storage; ids as a list travel inside the
    pickle, so a batch costs one hand-over instead of two.
    """
    images, item_ids, errors = zip(*samples, strict=True)
    return default_collate(images), list(item_ids), list(errors)


@lru_cache(maxsize=1)
def _decoder(device: str, workers: int) -> tuple[DataLoader, _ShardBatches]:
    """One DataLoader for the worker process's life, whose decode processes serve every teacher.

    Starting them for every shard cost about 0.17 s a shard at 28 px (bench/label_profile.py), a
    fifth of a 1,000-image shard's time. Starting them for every teacher (the loop makes a new
    teacher each generation) forked each job's decode processes from the worker's whole heap:
    jobs with a new teacher each ran 5-8% slower than jobs that reused one
    (bench/label_throughput.py with and without --reuse-teacher).
    """
    batches = _ShardBatches()
    loader = DataLoader(
        _Images(),
        batch_sampler=batches,
        collate_fn=_collate,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.startswith("cuda"),
    )
    return loader, batches


def _model_batches(loader: DataLoader, batch_size: int):
    """Decode batches joined into model batches of ``batch_size`` (see ``_ShardBatches``)."""
    parts, count = [], 0
    for part in loader:
        parts.append(part)
        count += len(part[1])
        if count >= batch_size:
            yield _join(parts)
            parts, count = [], 0
    if parts:
        yield _join(parts)


def _join(parts: list) -> tuple[torch.Tensor, list[int], list[str]]:
    if len(parts) == 1:
        return parts[0]
    images, item_ids, errors = zip(*parts, strict=True)
    return torch.cat(images), [i for batch in item_ids for i in batch], [e for batch in errors for e in batch]


def soft_labels(logits: torch.Tensor, *, temperature: float, keep_all: bool, top_k: int) -> list[dict]:
    """Rows for the labels table from a batch of logits (float32 on the CPU)."""
    log_probs = torch.log_softmax(logits / temperature, dim=1)
    probs = log_probs.exp()
    confidence, predicted = probs.max(dim=1)
    entropy = -(probs * log_probs).sum(dim=1)
    if keep_all:
        stored, indices, rest = probs, None, None
    else:
        stored, indices = probs.topk(top_k, dim=1)
        rest = (1.0 - stored.sum(dim=1)).clamp_min(0.0)
    # Whole columns to Python at once: indexing a tensor per row cost more than the write.
    count = probs.shape[0]
    probs_bytes = [row.tobytes() for row in stored.numpy().astype(np.float16)]
    top = [None] * count if indices is None else [row.tobytes() for row in indices.numpy().astype(np.int32)]
    rest_mass = [None] * count if rest is None else rest.tolist()
    return [
        {"predicted": p, "confidence": c, "entropy": e, "probs": b, "top_indices": t, "rest_mass": r}
        for p, c, e, b, t, r in zip(
            predicted.tolist(),
            confidence.tolist(),
            entropy.tolist(),
            probs_bytes,
            top,
            rest_mass,
            strict=True,
        )
    ]


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


def _pending_items(session: Session, shard: Shard, job: Job) -> list[tuple[int, str]]:
    done = select(Label.item_id).where(Label.job_id == job.id)
    failed = select(ItemError.item_id).where(ItemError.job_id == job.id)
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


def _succeed(session: Session, shard_id: int, job: Job) -> ShardResult:
    """Finish the shard with its progress counted exactly, once, at its end.

    The row lock (PostgreSQL; SQLite has one writer anyway) makes a copy of this shard that is
    committing right now wait, and the count runs inside the UPDATE, so no copy's increment can
    land between the count and the write and be lost. It runs in the transaction of the shard's
    last labels, after their inserts: every transaction takes the label rows before the shard's
    row, so two copies cannot deadlock.
    """
    shard = session.get(Shard, shard_id, with_for_update=True)
    labels, errors = _shard_counts(shard, job)
    done, failed = session.execute(
        update(Shard)
        .where(Shard.id == shard_id)
        .values(items_done=labels, items_failed=errors, state="succeeded", error=None, finished_at=utcnow())
        .returning(Shard.items_done, Shard.items_failed)
        .execution_options(synchronize_session=False)
    ).one()
    return ShardResult("succeeded", done, failed)


def _finish(session: Session, shard: Shard, state: str, error: str | None = None) -> ShardResult:
    shard.state, shard.error, shard.finished_at = state, error, utcnow()
    return ShardResult(state, shard.items_done, shard.items_failed)


def start_shard(shard_id: int) -> tuple[ShardResult | None, list[tuple[int, str]], Job | None]:
    """Claim the shard; return a final result if there is nothing to do, else the work."""
    with session_scope() as session:
        # Locked: a copy of this shard finishing right now is waited for, so its "succeeded" is
        # seen here and not turned back into "running".
        shard = session.get(Shard, shard_id, with_for_update=True)
        if shard is None:
            return ShardResult("missing"), [], None
        job = session.get(Job, shard.job_id)
        if shard.state in ("succeeded", "cancelled"):
            return ShardResult(shard.state, shard.items_done, shard.items_failed), [], job
        if job.cancelled_at is not None:
            return _finish(session, shard, "cancelled"), [], job
        teacher = session.get(Teacher, job.teacher_id)
        if teacher.status != "ready":
            reason = f"teacher {teacher.id} is {teacher.status}: {teacher.status_reason}"
            return _finish(session, shard, "failed", reason), [], job
        shard.state, shard.attempts, shard.error = "running", shard.attempts + 1, None
        shard.started_at = shard.started_at or utcnow()
        return None, _pending_items(session, shard, job), job


def label_shard(shard_id: int, *, device: str = "cpu", decode_workers: int = 0) -> ShardResult:
    result, items, job = start_shard(shard_id)
    if result is not None:
        return result
    model, spec = cached_teacher(job.teacher_id, device)
    on_gpu = device.startswith("cuda")
    loader, batches = _decoder(device, decode_workers)
    batches.start(items, spec.image_format, job.batch_size)
    writer = ShardWriter(shard_id, job)
    for images, item_ids, errors in _model_batches(loader, job.batch_size):
        ok = [i for i, e in enumerate(errors) if not e]
        rows: list[dict] = []
        if ok:
            logits = _forward(model, images if len(ok) == len(errors) else images[ok], device, on_gpu)
            rows = soft_labels(
                logits, temperature=job.temperature, keep_all=job.stores_full_distribution, top_k=job.top_k
            )
            for row, i in zip(rows, ok, strict=True):
                row.update(job_id=job.id, item_id=item_ids[i])
        bad = [{"job_id": job.id, "item_id": item_ids[i], "message": e} for i, e in enumerate(errors) if e]
        if (stopped := writer.add(rows, bad)) is not None:
            return stopped
    return writer.finish()


def _forward(model, images: torch.Tensor, device: str, on_gpu: bool) -> torch.Tensor:
    with torch.inference_mode():
        if on_gpu:
            images = images.to(device, non_blocking=True).to(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(images)
        else:
            logits = model(images)
    return logits.float().cpu()


class ShardWriter:
    """Buffers a shard's labels and item errors and commits them in transactions of about
    COMMIT_ROWS rows, or every COMMIT_SECONDS, whichever comes first."""

    def __init__(self, shard_id: int, job: Job):
        self.shard_id, self.job = shard_id, job
        self.rows: list[dict] = []
        self.bad: list[dict] = []
        self.last_commit = time.monotonic()

    def add(self, rows: list[dict], bad: list[dict]) -> ShardResult | None:
        """Buffer a batch; commit when due. A result means the job was cancelled: stop."""
        self.rows += rows
        self.bad += bad
        due = len(self.rows) + len(self.bad) >= COMMIT_ROWS
        if due or time.monotonic() - self.last_commit >= COMMIT_SECONDS:
            return self.flush()
        return None

    def flush(self) -> ShardResult | None:
        if not self.rows and not self.bad:
            return None
        stopped = _commit(self.shard_id, self.job, self.rows, self.bad)
        self.rows, self.bad, self.last_commit = [], [], time.monotonic()
        return stopped

    def finish(self) -> ShardResult:
        """The buffered rest and the shard's success in one transaction (one commit fewer a
        shard on the labeling loop's path); cancelled instead if the job was cancelled."""
        return _commit(self.shard_id, self.job, self.rows, self.bad, last=True)


def _commit(
    shard_id: int, job: Job, rows: list[dict], bad: list[dict], *, last: bool = False
) -> ShardResult | None:
    """Write labels and the shard's progress in one transaction; stop if the job was cancelled.
    With ``last``, the shard is finished in the same transaction (``_succeed``).

    Progress grows by what the inserts really added, in SQL (``items_done + n``), so a
    redelivered or concurrently running copy of the shard never counts an item twice; counting
    the whole shard again instead cost a join over its items with every batch.
    """
    with session_scope() as session:
        if session.scalar(select(Job.cancelled_at).where(Job.id == job.id)) is not None:
            # Locked, so a copy finishing the shard right now is waited for and seen, not undone.
            shard = session.get(Shard, shard_id, with_for_update=True)
            if shard.state == "succeeded":  # another copy of the shard finished it first
                return ShardResult(shard.state, shard.items_done, shard.items_failed)
            return _finish(session, shard, "cancelled")
        added = insert_ignoring_duplicates(session, Label, rows)
        failed = insert_ignoring_duplicates(session, ItemError, bad)
        if last:
            return _succeed(session, shard_id, job)
        # No state here: a copy that lags behind must not reopen a shard another copy finished.
        session.execute(
            update(Shard)
            .where(Shard.id == shard_id)
            .values(items_done=Shard.items_done + added, items_failed=Shard.items_failed + failed)
            .execution_options(synchronize_session=False)
        )
    return None


def mark_failed(shard_id: int, error: str) -> None:
    with session_scope() as session:
        shard = session.get(Shard, shard_id, with_for_update=True)
        if shard is not None and shard.state not in ("succeeded", "cancelled"):
            _finish(session, shard, "failed", error[:2000])
