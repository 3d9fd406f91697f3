"""Enqueueing work for the workers. Call only after the rows the tasks name have committed."""

from __future__ import annotations

from workers.celery_app import LABEL_SHARD, VALIDATE_TEACHER, app


class QueueUnavailable(RuntimeError):
    pass


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
