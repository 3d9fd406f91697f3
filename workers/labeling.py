"""Label one shard with its job's teacher, un-noised, and store each soft label exactly once.

Plain functions: the Celery task is a thin wrapper, and tests call these without a broker.
Each batch commits its labels together with the shard's recounted progress, so a crash loses at
most the batch in flight, and a rerun (redelivery, retry, resume) labels only what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from service.core.db import session_scope
from service.models import Item, ItemError, Job, Label, Shard, Teacher, utcnow
from workers.teacher_model import cached_teacher


@dataclass
class ShardResult:
    state: str
    labeled: int = 0
    failed: int = 0


class _Images(TorchDataset):
    """Decodes one image per index; an unreadable file becomes an error string, not a crash."""

    def __init__(self, items: list[tuple[int, str]], transform, mode: str, shape: tuple[int, ...]):
        self.items, self.transform, self.mode, self.shape = items, transform, mode, shape

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item_id, uri = self.items[index]
        try:
            with Image.open(uri) as image:
                tensor = self.transform(image.convert(self.mode))
            return tensor, item_id, ""
        except Exception as exc:  # any decode failure is recorded on the item
            return torch.zeros(self.shape), item_id, f"{type(exc).__name__}: {exc}"[:500]


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
    stored16 = stored.numpy().astype(np.float16)
    rows = []
    for i in range(probs.shape[0]):
        rows.append(
            {
                "predicted": int(predicted[i]),
                "confidence": float(confidence[i]),
                "entropy": float(entropy[i]),
                "probs": stored16[i].tobytes(),
                "top_indices": None if indices is None else indices[i].numpy().astype(np.int32).tobytes(),
                "rest_mass": None if rest is None else float(rest[i]),
            }
        )
    return rows


def insert_ignoring_duplicates(session: Session, model, rows: list[dict]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on the primary key: a rerun writes no duplicates."""
    if not rows:
        return
    dialect = {"postgresql": postgresql, "sqlite": sqlite}[session.get_bind().dialect.name]
    session.execute(dialect.insert(model).on_conflict_do_nothing(), rows)


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


def _recount(session: Session, shard: Shard, job: Job) -> None:
    """The shard's labels and item errors, counted in one round trip (it runs with every batch)."""
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

    shard.items_done, shard.items_failed = session.execute(select(count(Label), count(ItemError))).one()


def _finish(session: Session, shard: Shard, state: str, error: str | None = None) -> ShardResult:
    shard.state, shard.error, shard.finished_at = state, error, utcnow()
    return ShardResult(state, shard.items_done, shard.items_failed)


def start_shard(shard_id: int) -> tuple[ShardResult | None, list[tuple[int, str]], Job | None]:
    """Claim the shard; return a final result if there is nothing to do, else the work."""
    with session_scope() as session:
        shard = session.get(Shard, shard_id)
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
    model, transform, spec = cached_teacher(job.teacher_id, device)
    dataset = _Images(items, transform, spec.image_mode, (spec.channels, spec.image_size, spec.image_size))
    on_gpu = device.startswith("cuda")
    workers = decode_workers if len(items) > job.batch_size else 0
    loader = DataLoader(dataset, batch_size=job.batch_size, num_workers=workers, pin_memory=on_gpu)
    for images, item_ids, errors in loader:
        ok = [i for i, e in enumerate(errors) if not e]
        rows: list[dict] = []
        if ok:
            logits = _forward(model, images[ok], device, on_gpu)
            rows = soft_labels(
                logits, temperature=job.temperature, keep_all=job.stores_full_distribution, top_k=job.top_k
            )
            for row, i in zip(rows, ok, strict=True):
                row.update(job_id=job.id, item_id=int(item_ids[i]))
        bad = [
            {"job_id": job.id, "item_id": int(item_ids[i]), "message": e} for i, e in enumerate(errors) if e
        ]
        if (stopped := _commit_batch(shard_id, job, rows, bad)) is not None:
            return stopped
    with session_scope() as session:
        shard = session.get(Shard, shard_id)
        _recount(session, shard, job)
        return _finish(session, shard, "succeeded")


def _forward(model, images: torch.Tensor, device: str, on_gpu: bool) -> torch.Tensor:
    with torch.inference_mode():
        if on_gpu:
            images = images.to(device, non_blocking=True).to(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(images)
        else:
            logits = model(images)
    return logits.float().cpu()


def _commit_batch(shard_id: int, job: Job, rows: list[dict], bad: list[dict]) -> ShardResult | None:
    """Write a batch with the shard's recounted progress in one transaction; stop if cancelled."""
    with session_scope() as session:
        shard = session.get(Shard, shard_id)
        if session.scalar(select(Job.cancelled_at).where(Job.id == job.id)) is not None:
            return _finish(session, shard, "cancelled")
        insert_ignoring_duplicates(session, Label, rows)
        insert_ignoring_duplicates(session, ItemError, bad)
        _recount(session, shard, job)
        shard.state = "running"
    return None


def mark_failed(shard_id: int, error: str) -> None:
    with session_scope() as session:
        shard = session.get(Shard, shard_id)
        if shard is not None and shard.state not in ("succeeded", "cancelled"):
            _finish(session, shard, "failed", error[:2000])
