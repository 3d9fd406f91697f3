"""The queue interface: the Celery app and the tasks it sends, named by string.

The service owns the app so that it can enqueue without importing any worker code; the
workers register their tasks on it (``workers.tasks``). Call the enqueue functions only after
the rows the tasks name have committed.
"""

from __future__ import annotations

from celery import Celery
from kombu.transport import sqlalchemy as kombu_sqlalchemy
from sqlalchemy.exc import IntegrityError, OperationalError

from nst.config import get_settings

# The embedded broker (kombu's SQLAlchemy transport) polls an idle queue once a second, so a
# worker that finished a shard sat up to a second before fetching the next one (measured: about
# 1 s per shard in bench/label_throughput.py). Its `polling_interval` cannot be set the
# documented way, as a transport option, because the transport hands every option on to
# create_engine; the class attribute is the setting.
kombu_sqlalchemy.Transport.polling_interval = 0.05

# kombu guards the broker's first use with a lock of its own process only, so workers started
# together on a new embedded broker raced: one creating the tables another had just created
# ("table kombu_queue already exists"), or inserting a new queue's row another had just inserted
# (a UNIQUE violation). Either ended the slower worker ("Unrecoverable error"). What the other
# process made is what this one wanted.
_kombu_open = kombu_sqlalchemy.Channel._open
_kombu_get_or_create = kombu_sqlalchemy.Channel._get_or_create


def _open_across_processes(channel, attempts: int = 10):
    for attempt in range(attempts):
        try:
            return _kombu_open(channel)
        except OperationalError as exc:
            # Each table another process created is found by the next try's check before
            # creating; the next table may race again (two tables, any number of processes).
            if "already exists" not in str(exc) or attempt == attempts - 1:
                raise


def _get_or_create_across_processes(channel, queue: str):
    try:
        return _kombu_get_or_create(channel, queue)
    except IntegrityError:
        channel.session.rollback()
        return channel.session.query(channel.queue_cls).filter(channel.queue_cls.name == queue).one()


kombu_sqlalchemy.Channel._open = _open_across_processes
kombu_sqlalchemy.Channel._get_or_create = _get_or_create_across_processes

LABEL_SHARD = "workers.tasks.label_shard"
VALIDATE_TEACHER = "workers.tasks.validate_teacher"


class QueueUnavailable(RuntimeError):
    pass


def _transport_options(broker_url: str, visibility_timeout_s: int) -> dict:
    # Redis (and SQS) redeliver an unacknowledged message after this long, so it must exceed
    # the time one shard takes. kombu's SQLAlchemy transport has no such option: it would pass
    # it on to create_engine and fail.
    scheme = broker_url.split(":", 1)[0]
    if scheme in ("redis", "rediss", "sentinel"):
        # kombu looks for expired messages only every interval x throttle (10 x 10 s by
        # default): measured ~110 s to redeliver with a 30 s timeout. One sweep a few times per
        # timeout (at most every 10 s) makes the redelivery follow the timeout.
        interval = max(1, min(10, visibility_timeout_s // 3))
        return {
            "visibility_timeout": visibility_timeout_s,
            "unacked_restore_interval": interval,
            "unacked_restore_throttle": 1,
        }
    if scheme == "sqs":
        return {"visibility_timeout": visibility_timeout_s}
    return {}


def make_celery() -> Celery:
    settings = get_settings()
    settings.ensure_dirs()
    app = Celery("nst", broker=settings.broker_url, include=["workers.tasks"])
    app.conf.update(
        task_default_queue="nst",
        # Exactly-once labels rest on these: a message is acknowledged only after its shard has
        # committed, and a pool process that dies (SIGKILL, OOM) gets its message requeued. A
        # reserved but unstarted message is unacknowledged too: when the whole worker dies,
        # Redis redelivers it after the visibility timeout, like the running one.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=settings.worker_prefetch,
        # Named, not imported: `--pool prefork` (the default) runs this subclass, whose locks a
        # killed pool process cannot leave held (see workers/pool.py).
        worker_pool="workers.pool:TaskPool",
        broker_transport_options=_transport_options(settings.broker_url, settings.visibility_timeout_s),
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


app = make_celery()


def _send(name: str, arg: int | str) -> None:
    try:
        app.send_task(name, args=[arg])
    except Exception as exc:  # kombu raises many types for a broker that is down
        raise QueueUnavailable(f"the broker is unavailable: {exc}") from exc


def enqueue_shards(shard_ids: list[int]) -> None:
    for shard_id in shard_ids:
        _send(LABEL_SHARD, shard_id)


def enqueue_teacher_validation(teacher_id: str) -> None:
    _send(VALIDATE_TEACHER, teacher_id)
