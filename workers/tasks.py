"""Celery tasks: thin wrappers that take IDs and call the plain functions that hold the logic.

The worker runs this module (``celery -A workers.tasks worker``): it registers the tasks on the
service's Celery app. Settings are read when a task runs, in the worker process.
"""

from __future__ import annotations

import threading

from celery import Task
from celery.utils.log import get_task_logger
from kombu.transport import sqlalchemy as kombu_sqlalchemy
from sqlalchemy.exc import OperationalError

from nst.config import get_settings
from nst.inference import DEFAULT_BATCH_SIZE
from nst.states import TeacherStatus
from nst.storage import AccessDenied, StorageUnavailable
from service.core.db import session_scope
from service.lifecycle import set_teacher_status
from service.models import Teacher
from service.queue import LABEL_SHARD, VALIDATE_TEACHER, app
from workers import inference, labeling, process_init  # noqa: F401  (process_init connects signal handlers)
from workers.heartbeat import Heartbeat
from workers.reaper import Reaper
from workers.teacher_model import InvalidCheckpoint, TeacherSpec, cached_teacher, resolve_device, validate

logger = get_task_logger(__name__)

# Only a lost or busy database connection, items whose files could not be read, or a decode
# process that died are worth retrying; anything else would fail again.
TRANSIENT = (OperationalError, labeling.TransientItemErrors, labeling.DecodeProcessDied)

app.steps["worker"].add(Reaper)
app.steps["worker"].add(Heartbeat)
# A pool process that died: billiard waits this long for a result it may have sent before
# requeueing its message (10 s by default). Meanwhile the worker held that message and, with
# its prefetch spent, took no other: a worker whose pool processes were killed in quick
# succession sat idle ~18 s. A result that did arrive costs at most a duplicate delivery.
app.conf.worker_lost_wait = 1.0


def _session_per_thread(channel):
    # kombu's SQLAlchemy transport keeps one session per channel, but a lost pool process's
    # message is requeued from the pool's supervisor thread while the consumer thread polls:
    # the shared session broke ("session is in 'prepared' state") and the worker exited.
    sessions = channel.__dict__.setdefault("_sessions", threading.local())
    if getattr(sessions, "session", None) is None:
        sessions.session = channel._open()[1]()
    return sessions.session


kombu_sqlalchemy.Channel.session = property(_session_per_thread)


class RetryingTask(Task):
    """Retries as often as the settings allow, read when a retry is due."""

    @property
    def max_retries(self) -> int:
        return get_settings().task_max_retries


class ShardTask(RetryingTask):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        # Reached for a non-transient error, or once the retries are spent. A transient error
        # (the database away longer than the retries last) is no verdict on the shard: the
        # reaper sends it again once its lease lapses, within its bounded attempts.
        if not isinstance(exc, TRANSIENT):
            labeling.mark_failed(args[0], f"{type(exc).__name__}: {exc}")


@app.task(
    name=LABEL_SHARD,
    base=ShardTask,
    autoretry_for=TRANSIENT,
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=True,
)
def label_shard(shard_id: int) -> dict:
    settings = labeling.LabelingSettings.from_settings(get_settings(), worker=label_shard.request.hostname)
    result = labeling.label_shard(shard_id, settings)
    logger.info("shard %s %s: %s labeled, %s failed", shard_id, result.state, result.labeled, result.failed)
    return result.__dict__


# A store that cannot be reached, or that refuses this worker (its credentials or grants),
# says nothing about the file: retried, never a verdict; the teacher stays pending, with why.
UNREADABLE = (StorageUnavailable, AccessDenied)


@app.task(
    name=VALIDATE_TEACHER,
    base=RetryingTask,
    autoretry_for=(*TRANSIENT, *UNREADABLE),
    retry_backoff=2,
)
def validate_teacher(teacher_id: str) -> str:
    with session_scope() as session:
        teacher = session.get(Teacher, teacher_id)
        if teacher is None or teacher.status == TeacherStatus.READY:
            return "skipped"
        spec = TeacherSpec.from_row(teacher)
    try:
        validate(spec)
        status, reason = TeacherStatus.READY, None
    except UNREADABLE as exc:
        reason = f"a worker could not read the checkpoint, retrying: {type(exc).__name__}: {exc}"
        with session_scope() as session:
            set_teacher_status(session, teacher_id=teacher_id, status=TeacherStatus.PENDING, reason=reason)
        raise
    except InvalidCheckpoint as exc:
        status, reason = TeacherStatus.INVALID, str(exc)
    except Exception as exc:  # safetensors or torch refusing the file is a verdict too
        status, reason = TeacherStatus.INVALID, f"{type(exc).__name__}: {exc}"
    with session_scope() as session:
        set_teacher_status(session, teacher_id=teacher_id, status=status, reason=reason)
    logger.info("teacher %s is %s %s", teacher_id, status, reason or "")
    if status == TeacherStatus.READY and get_settings().prepare_teachers:
        _prepare_for_labeling(teacher_id)
    return status


def _prepare_for_labeling(teacher_id: str) -> None:
    """Prepare the teacher as a job with the default settings runs it on this worker, once it is
    ready: for OpenVINO its graph converted and kept on the host's disk (``graph_cache``), which
    a new teacher's first job otherwise paid inside its first shard (resnet18 at 28 px: 2.6 s;
    EfficientNet-Lite0 at 224 px: 43 s). Best effort: a failure leaves that to the first job."""
    try:
        device = str(resolve_device(get_settings().worker_device))
        cached_teacher(teacher_id, device, inference.resolve("auto", device), DEFAULT_BATCH_SIZE)
    except Exception:
        logger.warning("teacher %s: not prepared ahead of its first job", teacher_id, exc_info=True)
