"""The states of a labeling job, of its shards, of a teacher and of a worker: the API's contract, so the
client and the trainer read them as the service writes them. ``service/lifecycle.py`` is the one
module that changes them."""

from __future__ import annotations

from enum import StrEnum


class ShardState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobState(StrEnum):
    """Derived from the job's shards, never stored."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TeacherStatus(StrEnum):
    PENDING = "pending"  # registered, waiting for a worker to load it
    READY = "ready"
    INVALID = "invalid"


class WorkerState(StrEnum):
    """Derived from a worker's last report, never stored."""

    ONLINE = "online"
    STOPPED = "stopped"  # shut down cleanly
    LOST = "lost"  # silent for three of its heartbeats: killed, its host down, or cut off


UNFINISHED_SHARD_STATES = (ShardState.QUEUED, ShardState.RUNNING)
TERMINAL_JOB_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
