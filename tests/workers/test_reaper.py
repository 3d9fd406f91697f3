"""The reaper's rules (service.lifecycle.reap), item errors' kinds and the lifecycle log lines, on
rows written straight into the database: no worker, no broker."""

from __future__ import annotations

import errno
import json
import logging
from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from nst.states import JobState, ShardState
from service.core.db import session_scope
from service.crud.jobs import create_job, progress
from service.lifecycle import (
    PERMANENT,
    TRANSIENT,
    cancel_job,
    claim_shard,
    reap,
    release_shard,
    renew_lease,
    succeed_shard,
)
from service.models import Item, Job, Label, Shard, utcnow
from tests.utils import synthetic
from workers import decode, labeling

MAX = 3


def _new_job(shards: int, sent_ago_s: float) -> int:
    """A job of ``shards`` queued shards of two items each, all sent ``sent_ago_s`` ago."""
    teacher = synthetic.teacher(["a", "b"])
    dataset = synthetic.labeled_dataset(["a", "b"], [0] * (2 * shards))
    with session_scope() as session:
        job, _ = create_job(
            session,
            teacher_id=teacher,
            dataset_id=dataset,
            items_total=2 * shards,
            num_classes=2,
            options=synthetic.JOB_OPTIONS | {"shard_size": 2},
        )
        session.execute(
            Shard.__table__.update()
            .where(Shard.job_id == job.id)
            .values(enqueued_at=utcnow() - timedelta(seconds=sent_ago_s))
        )
        return job.id


@pytest.fixture
def job_id(backend) -> int:
    """A job of three queued shards of two items each, sent a minute ago."""
    synthetic.migrate()
    return _new_job(3, sent_ago_s=60)


def _shards(job_id: int) -> list[Shard]:
    with session_scope() as session:
        shards = list(session.scalars(select(Shard).where(Shard.job_id == job_id).order_by(Shard.index)))
        session.expunge_all()
        return shards


def _claim(shard_id: int, lease_ago_s: float | None = None) -> None:
    """A worker claims the shard; its lease lapsed ``lease_ago_s`` ago (None: still live)."""
    with session_scope() as session:
        assert claim_shard(session, shard_id=shard_id) is None
        if lease_ago_s is not None:
            session.get(Shard, shard_id).lease_expires_at = utcnow() - timedelta(seconds=lease_ago_s)


def _reap(unclaimed_s: float | None = 30) -> list[int]:
    with session_scope() as session:
        return reap(session, unclaimed_s=unclaimed_s, max_attempts=MAX)


def test_a_lapsed_lease_is_sent_again_with_the_reap_counted(job_id):
    first, second, _ = _shards(job_id)
    _claim(first.id, lease_ago_s=1)
    _claim(second.id)  # a live lease: its worker is alive, it stays running
    assert _reap() == [first.id]
    first, second, _ = _shards(job_id)
    assert (first.state, first.attempts, first.reaped_count) == (ShardState.QUEUED, 1, 1)
    assert (first.lease_expiries, second.lease_expiries) == (1, 0)
    assert first.lease_expires_at is None and first.enqueued_at > utcnow() - timedelta(seconds=5)
    assert (second.state, second.reaped_count) == (ShardState.RUNNING, 0)
    _claim(first.id)  # its new delivery: one attempt more
    assert _shards(job_id)[0].attempts == 2


def test_a_renewed_lease_keeps_its_shard(job_id):
    first = _shards(job_id)[0]
    _claim(first.id, lease_ago_s=1)
    with session_scope() as session:
        renew_lease(session, shard_id=first.id, lease_s=20)
    assert _reap() == []


def test_an_unclaimed_shard_is_sent_again_only_once_the_stack_is_idle(job_id):
    first, second, third = _shards(job_id)
    _claim(first.id)
    assert _reap() == []  # a live lease: the queue is moving, the others wait their turn
    with session_scope() as session:
        job = session.get(Job, job_id)
        succeed_shard(session, shard_id=first.id, job=job)
    assert _reap() == []  # a shard finished just now: still moving
    assert _reap(unclaimed_s=None) == []  # a worker that just started checks leases only
    with session_scope() as session:
        session.get(Shard, first.id).finished_at = utcnow() - timedelta(minutes=1)
    assert _reap() == [second.id, third.id]
    assert [s.reaped_count for s in _shards(job_id)] == [0, 1, 1]
    assert [s.lease_expiries for s in _shards(job_id)] == [0, 0, 0]  # sent again, no lease lapsed
    assert _reap() == []  # just sent: they count as new


def _later_job(sent_ago_s: float) -> list[Shard]:
    """Another job of two shards, sent ``sent_ago_s`` ago (behind the fixture's in the queue)."""
    return _shards(_new_job(2, sent_ago_s))


def test_a_message_the_queue_passed_by_is_sent_again_while_work_goes_on(job_id):
    first, second, third = _shards(job_id)
    _claim(first.id)
    with session_scope() as session:  # a transient error: its retry is due later
        release_shard(session, shard_id=first.id, reason="2 items could not be read")
        session.get(Shard, first.id).enqueued_at = utcnow() - timedelta(minutes=1)
    later, _ = _later_job(sent_ago_s=20)  # sent 40 s after the fixture's shards
    _claim(later.id)  # a worker is busy on it: the stack is not idle
    assert _reap() == [second.id, third.id]  # never claimed, and the queue passed them by
    assert [s.reaped_count for s in _shards(job_id)] == [0, 1, 1]  # the released one waits its retry


def test_a_shard_that_may_wait_in_a_prefetch_is_not_sent_again(job_id):
    first, second, third = _shards(job_id)
    _claim(first.id)  # sent with them, still running: its worker may hold the others' messages
    later, _ = _later_job(sent_ago_s=20)
    _claim(later.id)
    assert _reap() == []


def test_a_shard_sent_just_before_a_claimed_one_is_not_passed_by(job_id):
    later, _ = _later_job(sent_ago_s=50)  # only 10 s after the fixture's: too close to tell
    _claim(later.id)
    assert _reap() == []


def test_a_shard_past_its_attempts_fails_the_job_with_the_reason(job_id):
    first = _shards(job_id)[0]
    for _ in range(MAX):
        _claim(first.id, lease_ago_s=1)
        resent = _reap(unclaimed_s=None)
    assert resent == []
    first = _shards(job_id)[0]
    assert first.state == ShardState.FAILED and first.attempts == MAX
    assert "lease expired after 3 attempts" in first.error and "NST_SHARD_MAX_ATTEMPTS=3" in first.error
    with session_scope() as session:
        job = progress(session, job=session.get(Job, job_id))
        assert job.state == JobState.FAILED and first.error in job.errors


def test_a_lost_message_sent_too_often_fails_too(job_id):
    with session_scope() as session:
        for shard in session.scalars(select(Shard).where(Shard.job_id == job_id)):
            shard.reaped_count = MAX
    assert _reap() == []
    assert {s.state for s in _shards(job_id)} == {ShardState.FAILED}
    assert "never claimed after 0 attempts and 3 sends" in _shards(job_id)[0].error


def test_a_cancelled_jobs_abandoned_shard_is_settled_not_sent(job_id):
    first = _shards(job_id)[0]
    _claim(first.id, lease_ago_s=1)
    with session_scope() as session:
        cancel_job(session, job=session.get(Job, job_id))
    assert _reap() == []
    assert _shards(job_id)[0].state == ShardState.CANCELLED


def test_an_alive_shard_sent_again_costs_only_a_duplicate_delivery(job_id):
    """A worker stalled past its lease (not dead): the reaper sends its shard again, both copies
    write the same labels, and the progress counts each once."""
    first = _shards(job_id)[0]
    _claim(first.id, lease_ago_s=1)
    assert _reap(unclaimed_s=None) == [first.id]
    _claim(first.id)  # the second copy starts while the first still runs
    with session_scope() as session:
        items = session.scalars(
            select(Item.id)
            .join(Job, Job.dataset_id == Item.dataset_id)
            .where(Job.id == job_id, Item.ordinal < 2)
        ).all()
        rows = [
            {
                "job_id": job_id,
                "item_id": i,
                "predicted": 0,
                "confidence": 0.9,
                "entropy": 0.1,
                "probs": b"\x00\x00\x00\x00",
            }
            for i in items
        ]
        session.execute(insert(Label), rows)
        succeed_shard(session, shard_id=first.id, job=session.get(Job, job_id))
    with session_scope() as session:  # the other copy finishes too: nothing changes
        assert claim_shard(session, shard_id=first.id).state == ShardState.SUCCEEDED
        succeed_shard(session, shard_id=first.id, job=session.get(Job, job_id))
    first = _shards(job_id)[0]
    assert (first.state, first.items_done, first.attempts, first.reaped_count) == ("succeeded", 2, 2, 1)


def test_released_shards_wait_for_their_retry_not_the_reaper(job_id):
    first = _shards(job_id)[0]
    _claim(first.id)
    with session_scope() as session:
        release_shard(session, shard_id=first.id, reason="2 items could not be read")
    first = _shards(job_id)[0]
    assert first.state == ShardState.QUEUED and first.lease_expires_at is None
    with session_scope() as session:  # sent just now (by the task's retry): not unclaimed
        session.execute(Shard.__table__.update().where(Shard.id != first.id).values(enqueued_at=utcnow()))
    assert _reap() == []


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OSError(errno.EIO, "Input/output error"), True),
        (OSError(errno.ETIMEDOUT, "timed out"), True),
        (ConnectionError("store did not answer"), True),
        (TimeoutError(), True),
        (FileNotFoundError(errno.ENOENT, "No such file"), False),
        (PermissionError(errno.EACCES, "denied"), False),
        (ValueError("cannot identify image file"), False),
    ],
)
def test_only_a_failed_read_is_a_transient_item_error(error, transient, tmp_path):
    assert decode.is_transient(error) is transient
    message = decode.TransientError(str(error)) if transient else str(error)
    assert labeling._item_error(1, 2, message)["kind"] == (TRANSIENT if transient else PERMANENT)


def test_an_unreadable_file_is_a_permanent_item_error(tmp_path):
    fmt = decode.ImageFormat(1, 28, "bilinear", (0.5,), (0.5,), 1.0)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    _, _, error, _ = decode.ImageFiles()[(7, str(tmp_path / "bad.png"), fmt)]
    assert error and not isinstance(error, decode.TransientError)


def test_each_state_change_is_one_json_line_naming_job_shard_and_state(job_id, monkeypatch, caplog):
    monkeypatch.setenv("NST_LOG_JSON", "1")
    from nst.config import get_settings

    get_settings.cache_clear()
    first, second, _ = _shards(job_id)
    with caplog.at_level(logging.INFO, logger="nst.lifecycle"):
        _claim(first.id, lease_ago_s=1)
        _reap(unclaimed_s=None)
        _claim(second.id)
        with session_scope() as session:
            release_shard(session, shard_id=second.id, reason="1 item could not be read")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "nst.lifecycle"]
    assert [line["event"] for line in lines] == [
        "job.running",
        "shard.running",
        "shard.reaped",
        "shard.running",
        "shard.released",
    ]
    assert all(line["job"] == job_id and "at" in line for line in lines)
    assert [line.get("shard") for line in lines[1:]] == [first.id, first.id, second.id, second.id]
    assert lines[2]["reason"] == "lease expired" and lines[2]["reaped"] == 1
