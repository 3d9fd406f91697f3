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
from workers import cores, decode, inference, label_writes
from workers.decode import TransientError, model_batches
from workers.label_writes import (
    ShardWriter,
    forget_transient_errors,
    mark_suspect,
    pending_items,
    suspects,
    unmark_suspect,
)
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
    worker: str | None = None  # the Celery node name, for the shards' provenance

    @classmethod
    def from_settings(cls, settings: Settings, *, worker: str | None = None) -> LabelingSettings:
        return cls(
            worker=worker,
            device=str(resolve_device(settings.worker_device)),
            decode_workers=cores.decode_processes(settings.decode_workers),
            commit_rows=settings.commit_rows,
            commit_seconds=settings.commit_seconds,
            lease_s=settings.lease_s,
            max_attempts=settings.shard_max_attempts,
        )


# From this attempt on a shard is labeled carefully: two claims of it did not finish, so a
# worker may be dying on one of its images.
CAREFUL_FROM_ATTEMPT = 3


@dataclass
class Work:
    """What an attempt has to do: the pending items, their job, which attempt this is and the
    items a worker already died on once; and, in a careful pass, the item marked right now."""

    items: list[tuple[int, str]]
    job: Job
    attempt: int
    suspects: set[int]
    marked: tuple[int, bool] | None = None  # (item, marked again)


def start_shard(shard_id: int) -> ShardResult | Work:
    """Claim the shard; return a final result if there is nothing to do, else its work."""
    with session_scope() as session:
        if (result := claim_shard(session, shard_id=shard_id)) is not None:
            return result
        shard = session.get(Shard, shard_id)
        job = session.get(Job, shard.job_id)
        items, suspected = _pending(session, shard_id, job)
        return Work(items, job, shard.attempts, suspected)


def _pending(session, shard_id: int, job: Job) -> tuple[list[tuple[int, str]], set[int]]:
    """Items whose read failed in an earlier attempt or pass are pending again."""
    shard = session.get(Shard, shard_id)
    forget_transient_errors(session, shard, job)
    return pending_items(session, shard, job), suspects(session, shard, job)


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
    work = start_shard(shard_id)
    if isinstance(work, ShardResult):
        return work
    final = work.attempt >= settings.max_attempts  # the last attempt records transient errors for good
    careful = work.attempt >= CAREFUL_FROM_ATTEMPT or bool(work.suspects)
    with _lease(shard_id, settings.lease_s):
        for run in (1, 2):
            try:
                return _label(shard_id, work, settings, final=final, careful=careful)
            except (OperationalError, TransientItemErrors):
                raise  # the database, or items to read again: the task retries it
            except Exception:
                # A dead decode process (SIGKILL: the OOM killer on a large image) breaks the
                # worker's DataLoader for every later shard: rebuild it and label the rest again,
                # carefully, since one of them may be what killed it.
                decode.reset(decode.decoder(settings.device, settings.decode_workers)[0])
                if run == 2:
                    raise
                logger.warning(
                    "shard %s: labeling failed, decode processes restarted; the rest one image at a time",
                    shard_id,
                    exc_info=True,
                )
                careful = True
                with session_scope() as session:
                    work.items, work.suspects = _pending(session, shard_id, work.job)
    raise AssertionError("unreachable")


def _label(
    shard_id: int, work: Work, settings: LabelingSettings, *, final: bool, careful: bool
) -> ShardResult:
    job, device = work.job, settings.device
    mode = inference.resolve(job.inference, device)
    runner, spec = cached_teacher(job.teacher_id, device, mode, job.batch_size, job.noised_teacher)
    if work.items:  # provenance: the mode that labels, after any fallback, and the worker, beside
        with session_scope() as session:  # any earlier attempt's (one with nothing to label adds none)
            session.get(Shard, shard_id).record_labeler(runner.mode, settings.worker)
    if careful:
        batches = _one_at_a_time(work, spec.image_format)
    else:
        loader, sampler = decode.decoder(device, settings.decode_workers)
        sampler.start(work.items, spec.image_format, job.batch_size)
        batches = model_batches(loader, job.batch_size)
    writer = ShardWriter(
        shard_id, job, commit_rows=settings.commit_rows, commit_seconds=settings.commit_seconds
    )
    unread = 0
    try:
        for images, item_ids, errors in batches:
            rows, bad = _outcomes(runner, job, images, item_ids, errors)
            unread += sum(b["kind"] == TRANSIENT for b in bad)
            if careful:  # this image's outcome replaces its mark, at once
                stopped = label_writes.commit_labels(shard_id, job, rows, bad, cleared=item_ids[0])
                work.marked = None
            else:
                stopped = writer.add(rows, bad)
            if stopped is not None:
                return stopped
    except Exception:
        # An error this process lived to see (a forward that failed, the database away) is no
        # death on the image: its mark is taken back. Only a death leaves it.
        if work.marked is not None:
            _unmark(job.id, *work.marked)
        raise
    if unread and not final:
        if (stopped := writer.flush()) is not None:
            return stopped
        reason = f"{unread} items could not be read; a later attempt reads them again"
        with session_scope() as session:
            release_shard(session, shard_id=shard_id, reason=reason)
        raise TransientItemErrors(f"shard {shard_id}: {reason}")
    return writer.finish()


def _one_at_a_time(work: Work, image_format) -> Iterator[decode.Batch]:
    """The careful pass: each image decoded here, in this process, behind its mark
    (``mark_suspect``), so that the image a worker keeps dying on is found and skipped instead
    of failing the shard. Slower (a commit per image), and only for shards that need it."""
    files = decode.ImageFiles()
    for item_id, uri in work.items:
        again = item_id in work.suspects
        mark_suspect(work.job.id, item_id, again=again)
        work.marked = (item_id, again)
        yield decode.collate([files[(item_id, uri, image_format)]])


def _unmark(job_id: int, item_id: int, again: bool) -> None:
    try:
        unmark_suspect(job_id, item_id, again=again)
    except Exception:  # the database is away: the mark stays, and costs the image one more try
        logger.warning("job %s item %s: its mark could not be taken back", job_id, item_id, exc_info=True)


def _outcomes(runner, job: Job, images: torch.Tensor, item_ids: list[int], errors: list[str]):
    """A batch's labels and item errors."""
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
    return rows, bad


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
