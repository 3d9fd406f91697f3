"""Label one shard with its job's teacher, un-noised (noised only for the ablation), and store
each soft label exactly once.

Plain functions: the Celery task is a thin wrapper, and tests call these without a broker. The
loop ties the parts together: images decoded in batches (``workers.decode``), a forward pass,
soft labels from the logits (``workers.soft_labels``), and idempotent writes with the shard's
progress (``workers.label_writes``); the shard's state changes in ``service.lifecycle``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from sqlalchemy.exc import OperationalError

from nst.config import Settings
from nst.states import ShardState
from service.core.db import session_scope
from service.lifecycle import TRANSIENT, ShardResult, claim_shard, release_shard, renew_lease, stop_shard
from service.models import Job, Shard
from workers import decode, inference
from workers.decode import TransientError, model_batches
from workers.label_writes import ShardWriter, forget_transient_errors, pending_items
from workers.soft_labels import soft_labels
from workers.teacher_model import cached_teacher, resolve_device

logger = logging.getLogger(__name__)


class TransientItemErrors(RuntimeError):
    """Some items could not be read this attempt; the shard was released for a later one."""


class DecodeProcessDied(RuntimeError):
    """A decode process died where the shard's own recovery could not catch it; the decode
    processes were restarted and the task retries the shard."""


@dataclass(frozen=True)
class LabelingSettings:
    """What the labeling loop takes from the worker's settings."""

    device: str
    decode_workers: int
    commit_rows: int
    commit_seconds: float
    lease_s: float = 20.0
    max_attempts: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> LabelingSettings:
        return cls(
            device=str(resolve_device(settings.worker_device)),
            decode_workers=settings.decode_workers,
            commit_rows=settings.commit_rows,
            commit_seconds=settings.commit_seconds,
            lease_s=settings.lease_s,
            max_attempts=settings.shard_max_attempts,
        )


def start_shard(shard_id: int) -> tuple[ShardResult | None, list[tuple[int, str]], Job | None, int]:
    """Claim the shard; return a final result if there is nothing to do, else the work and the
    attempt this is. Items whose read failed in an earlier attempt are pending again."""
    with session_scope() as session:
        if (result := claim_shard(session, shard_id=shard_id)) is not None:
            return result, [], None, 0
        shard = session.get(Shard, shard_id)
        job = session.get(Job, shard.job_id)
        forget_transient_errors(session, shard, job)
        return None, pending_items(session, shard, job), job, shard.attempts


def label_shard(shard_id: int, settings: LabelingSettings) -> ShardResult:
    try:
        return _label_shard(shard_id, settings)
    except RuntimeError as exc:
        # PyTorch reports a dead decode process from its SIGCHLD handler, so the error can
        # surface anywhere in this process (starting the lease thread, a commit), not only
        # inside the pass that recovers from it.
        if not str(exc).startswith("DataLoader worker"):
            raise
        decode.reset(decode.decoder(settings.device, settings.decode_workers)[0])
        raise DecodeProcessDied(f"shard {shard_id}: {exc}") from exc


def _label_shard(shard_id: int, settings: LabelingSettings) -> ShardResult:
    result, items, job, attempt = start_shard(shard_id)
    if result is not None:
        return result
    final = attempt >= settings.max_attempts  # the last attempt records transient errors for good
    with _lease(shard_id, settings.lease_s):
        for run in (1, 2):
            try:
                return _label(shard_id, job, items, settings, final=final)
            except OperationalError:
                raise  # the database: the task retries it
            except Exception:
                # A dead decode process (SIGKILL: the OOM killer on a large image) breaks the
                # worker's DataLoader for every later shard: rebuild it and label the rest again.
                decode.reset(decode.decoder(settings.device, settings.decode_workers)[0])
                if run == 2:
                    raise
                logger.warning(
                    "shard %s: labeling failed, decode processes restarted", shard_id, exc_info=True
                )
                with session_scope() as session:
                    items = pending_items(session, session.get(Shard, shard_id), job)
    raise AssertionError("unreachable")


def _label(shard_id: int, job: Job, items, settings: LabelingSettings, *, final: bool) -> ShardResult:
    device = settings.device
    mode = inference.resolve(job.inference, device)
    runner, spec = cached_teacher(job.teacher_id, device, mode, job.batch_size, job.noised_teacher)
    with session_scope() as session:  # provenance: the mode that ran, after any fallback
        session.get(Shard, shard_id).inference = runner.mode
    loader, batches = decode.decoder(device, settings.decode_workers)
    batches.start(items, spec.image_format, job.batch_size)
    writer = ShardWriter(
        shard_id, job, commit_rows=settings.commit_rows, commit_seconds=settings.commit_seconds
    )
    unread = 0
    for images, item_ids, errors in model_batches(loader, job.batch_size):
        ok = [i for i, e in enumerate(errors) if not e]
        rows: list[dict] = []
        if ok:
            logits = _forward(runner, images if len(ok) == len(errors) else images[ok])
            rows = soft_labels(
                logits, temperature=job.temperature, keep_all=job.stores_full_distribution, top_k=job.top_k
            )
            for row, i in zip(rows, ok, strict=True):
                row.update(job_id=job.id, item_id=item_ids[i])
        rows, not_finite = finite_rows(rows)
        bad = [_item_error(job.id, item_ids[i], e) for i, e in enumerate(errors) if e]
        bad += [_item_error(job.id, item_id, NOT_FINITE) for item_id in not_finite]
        unread += sum(b["kind"] == TRANSIENT for b in bad)
        if (stopped := writer.add(rows, bad)) is not None:
            return stopped
    if unread and not final:
        if (stopped := writer.flush()) is not None:
            return stopped
        reason = f"{unread} items could not be read; a later attempt reads them again"
        with session_scope() as session:
            release_shard(session, shard_id=shard_id, reason=reason)
        raise TransientItemErrors(f"shard {shard_id}: {reason}")
    return writer.finish()


NOT_FINITE = "the teacher's output for this image is not finite (NaN or infinity)"


def finite_rows(rows: list[dict]) -> tuple[list[dict], list[int]]:
    """The rows whose confidence is a number, and the item IDs of the rest: a NaN would sort
    above every confidence in PostgreSQL and has no place in a confidence histogram, so such an
    output is a permanent item error, not a label."""
    if all(math.isfinite(row["confidence"]) for row in rows):
        return rows, []
    finite = [row for row in rows if math.isfinite(row["confidence"])]
    return finite, [row["item_id"] for row in rows if not math.isfinite(row["confidence"])]


def _item_error(job_id: int, item_id: int, message: str) -> dict:
    kind = TRANSIENT if isinstance(message, TransientError) else "permanent"
    return {"job_id": job_id, "item_id": item_id, "message": str(message), "kind": kind}


@contextmanager
def _lease(shard_id: int, lease_s: float) -> Iterator[None]:
    """Renew the shard's lease every quarter of it while the block runs, from a thread: by
    time, not by progress, so a slow model's long batch keeps its shard. A worker that dies stops
    renewing, and the reaper takes the shard back once the lease lapses."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 4):
            try:
                with session_scope() as session:
                    renew_lease(session, shard_id=shard_id, lease_s=lease_s)
            except Exception:  # the database is away: the next beat tries again
                logger.warning("shard %s: lease not renewed", shard_id, exc_info=True)

    beat = threading.Thread(target=renew, name=f"lease-{shard_id}", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()


def _forward(runner: inference.Runner, images: torch.Tensor) -> torch.Tensor:
    return runner(images)


def mark_failed(shard_id: int, error: str) -> None:
    """Fail the shard with the error that ended its task, unless it is already final."""
    with session_scope() as session:
        stop_shard(session, shard_id=shard_id, state=ShardState.FAILED, error=error[:2000])
