"""Label one shard with its job's teacher, un-noised, and store each soft label exactly once.

Plain functions: the Celery task is a thin wrapper, and tests call these without a broker. The
loop ties the parts together: images decoded in batches (``workers.decode``), a forward pass,
soft labels from the logits (``workers.soft_labels``), and idempotent writes with the shard's
progress (``workers.label_writes``); the shard's state changes in ``service.lifecycle``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nst.config import Settings
from nst.states import ShardState
from service.core.db import session_scope
from service.lifecycle import ShardResult, claim_shard, stop_shard
from service.models import Job, Shard
from workers.decode import decoder, model_batches
from workers.label_writes import ShardWriter, pending_items
from workers.soft_labels import soft_labels
from workers.teacher_model import cached_teacher, resolve_device


@dataclass(frozen=True)
class LabelingSettings:
    """What the labeling loop takes from the worker's settings."""

    device: str
    decode_workers: int
    commit_rows: int
    commit_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> LabelingSettings:
        return cls(
            device=str(resolve_device(settings.worker_device)),
            decode_workers=settings.decode_workers,
            commit_rows=settings.commit_rows,
            commit_seconds=settings.commit_seconds,
        )


def start_shard(shard_id: int) -> tuple[ShardResult | None, list[tuple[int, str]], Job | None]:
    """Claim the shard; return a final result if there is nothing to do, else the work."""
    with session_scope() as session:
        if (result := claim_shard(session, shard_id=shard_id)) is not None:
            return result, [], None
        shard = session.get(Shard, shard_id)
        job = session.get(Job, shard.job_id)
        return None, pending_items(session, shard, job), job


def label_shard(shard_id: int, settings: LabelingSettings) -> ShardResult:
    result, items, job = start_shard(shard_id)
    if result is not None:
        return result
    device = settings.device
    model, spec = cached_teacher(job.teacher_id, device)
    on_gpu = device.startswith("cuda")
    loader, batches = decoder(device, settings.decode_workers)
    batches.start(items, spec.image_format, job.batch_size)
    writer = ShardWriter(
        shard_id, job, commit_rows=settings.commit_rows, commit_seconds=settings.commit_seconds
    )
    for images, item_ids, errors in model_batches(loader, job.batch_size):
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


def mark_failed(shard_id: int, error: str) -> None:
    """Fail the shard with the error that ended its task, unless it is already final."""
    with session_scope() as session:
        stop_shard(session, shard_id=shard_id, state=ShardState.FAILED, error=error[:2000])
