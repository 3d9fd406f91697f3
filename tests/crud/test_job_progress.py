"""A job's throughput and ETA (service.crud.jobs.progress), on shard rows written straight into
the database: no worker, no broker."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from nst.states import JobState, ShardState
from service.core.db import session_scope
from service.crud import workers
from service.crud.jobs import NO_WORKER_AFTER_S, PACE_SHARDS, STALLED_AFTER_S, create_job, progress
from service.models import Job, Shard, utcnow
from tests.utils import synthetic
from tests.utils.env import clear_caches

SHARD_ITEMS = 2


def _job(shards: int) -> int:
    teacher = synthetic.teacher(["a", "b"])
    dataset = synthetic.labeled_dataset(["a", "b"], [0] * (SHARD_ITEMS * shards))
    with session_scope() as session:
        job, _ = create_job(
            session,
            teacher_id=teacher,
            dataset_id=dataset,
            items_total=SHARD_ITEMS * shards,
            num_classes=2,
            options=synthetic.JOB_OPTIONS | {"shard_size": SHARD_ITEMS},
        )
        return job.id


def _finish(session, job_id: int, index: int, *, started_ago_s: float, finished_ago_s: float, now) -> None:
    session.execute(
        update(Shard)
        .where(Shard.job_id == job_id, Shard.index == index)
        .values(
            state=ShardState.SUCCEEDED,
            attempts=1,
            items_done=SHARD_ITEMS,
            started_at=now - timedelta(seconds=started_ago_s),
            finished_at=now - timedelta(seconds=finished_ago_s),
        )
    )


@pytest.fixture
def migrated(backend):
    synthetic.migrate()


def test_the_eta_follows_the_recent_pace_after_an_outage(migrated):
    """An hour at one shard a minute, two hours with no worker, then a shard every 10 s: the ETA
    of the shards left is the recent pace's, where the whole job's average would carry the outage."""
    now = utcnow()
    slow, fast, left = 60, PACE_SHARDS + 2, 10
    job_id = _job(slow + fast + left)
    with session_scope() as session:
        # Shards 0-59 finished 3 h to 2 h ago, one a minute.
        for i in range(slow):
            start = 3 * 3600 - 60 * i
            _finish(session, job_id, i, started_ago_s=start, finished_ago_s=start - 60, now=now)
        # After the outage, one every 10 s; the last finished 5 s ago.
        for j in range(fast):
            done_ago = 5 + 10 * (fast - 1 - j)
            _finish(session, job_id, slow + j, started_ago_s=done_ago + 10, finished_ago_s=done_ago, now=now)
    with session_scope() as session:
        p = progress(session, job=session.get(Job, job_id), now=now)
    assert p.state == JobState.RUNNING
    assert p.items_done == SHARD_ITEMS * (slow + fast)
    # The last PACE_SHARDS shards' items over the time since the one before them finished.
    since_s = 5 + 10 * PACE_SHARDS
    pace = PACE_SHARDS * SHARD_ITEMS / since_s
    assert p.eta_s == pytest.approx(left * SHARD_ITEMS / pace)
    # The throughput stays the whole job's: items over the time since the first claim.
    assert p.throughput == pytest.approx(p.items_done / (3 * 3600))


def test_a_new_job_s_eta_is_its_average_so_far(migrated):
    """Until more than PACE_SHARDS shards have finished there is no window of them: the pace is
    the whole job's so far, the items of running shards included."""
    now = utcnow()
    job_id = _job(PACE_SHARDS + 4)
    with session_scope() as session:
        for i in range(PACE_SHARDS):
            _finish(session, job_id, i, started_ago_s=100, finished_ago_s=50 - i, now=now)
        session.execute(  # one running, one item in
            update(Shard)
            .where(Shard.job_id == job_id, Shard.index == PACE_SHARDS)
            .values(
                state=ShardState.RUNNING, attempts=1, items_done=1, started_at=now - timedelta(seconds=10)
            )
        )
    with session_scope() as session:
        p = progress(session, job=session.get(Job, job_id), now=now)
    done = PACE_SHARDS * SHARD_ITEMS + 1
    assert p.items_done == done
    assert p.throughput == pytest.approx(done / 100)
    assert p.eta_s == pytest.approx((SHARD_ITEMS * (PACE_SHARDS + 4) - done) / (done / 100))


def _send(session, job_id: int, *, ago_s: float, now) -> None:
    """Every shard of the job sent ``ago_s`` seconds before ``now`` (created or resumed then)."""
    sent = now - timedelta(seconds=ago_s)
    session.execute(update(Shard).where(Shard.job_id == job_id).values(enqueued_at=sent))
    session.execute(update(Job).where(Job.id == job_id).values(created_at=sent))


def _idle(job_id: int, now) -> tuple[float | None, bool]:
    with session_scope() as session:
        p = progress(session, job=session.get(Job, job_id), now=now)
    return p.worker_idle_s, p.waiting_for_worker


def _worker_reports(now, *, pid: int = 10) -> None:
    with session_scope() as session:
        workers.report(
            session, name="w1@host", pid=pid, device="cpu", concurrency=1, heartbeat_s=5.0, now=now
        )


def test_a_job_no_worker_touches_is_waiting_for_one_from_its_last_send(migrated):
    now = utcnow()
    _worker_reports(now)  # online, busy elsewhere: the job waits a minute before it says so
    job_id = _job(3)
    with session_scope() as session:
        _send(session, job_id, ago_s=STALLED_AFTER_S - 1, now=now)
    assert _idle(job_id, now) == (pytest.approx(STALLED_AFTER_S - 1), False)
    with session_scope() as session:
        _send(session, job_id, ago_s=600, now=now)
    assert _idle(job_id, now) == (pytest.approx(600), True)
    with session_scope() as session:  # resumed: its shards sent again, the job created long ago
        session.execute(update(Shard).where(Shard.job_id == job_id).values(enqueued_at=now))
    assert _idle(job_id, now) == (0.0, False)


def test_a_live_lease_is_a_worker_at_work_and_a_lapsed_one_counts_from_its_last_renewal(
    migrated, monkeypatch
):
    monkeypatch.setenv("NST_LEASE_S", "20")
    clear_caches()
    now = utcnow()
    _worker_reports(now)
    job_id = _job(3)
    with session_scope() as session:
        _send(session, job_id, ago_s=3600, now=now)
        _finish(session, job_id, 0, started_ago_s=3000, finished_ago_s=2000, now=now)
        running = update(Shard).where(Shard.job_id == job_id, Shard.index == 1)
        session.execute(
            running.values(state=ShardState.RUNNING, attempts=1, started_at=now - timedelta(seconds=1900))
        )
        session.execute(running.values(lease_expires_at=now + timedelta(seconds=5)))
    assert _idle(job_id, now) == (0.0, False)
    with session_scope() as session:  # its worker died: renewed last 20 s before the lease lapsed
        session.execute(running.values(lease_expires_at=now - timedelta(seconds=100)))
    assert _idle(job_id, now) == (pytest.approx(120), True)
    with session_scope() as session:  # a shard finished since
        _finish(session, job_id, 2, started_ago_s=50, finished_ago_s=10, now=now)
    assert _idle(job_id, now) == (pytest.approx(10), False)


def test_with_no_worker_online_a_job_waits_for_one_after_seconds_not_a_minute(migrated):
    now = utcnow()
    job_id = _job(3)
    with session_scope() as session:
        _send(session, job_id, ago_s=NO_WORKER_AFTER_S - 1, now=now)
    # A worker's claim may be on its way.
    assert _idle(job_id, now) == (pytest.approx(NO_WORKER_AFTER_S - 1), False)
    with session_scope() as session:
        _send(session, job_id, ago_s=NO_WORKER_AFTER_S, now=now)
    assert _idle(job_id, now) == (pytest.approx(NO_WORKER_AFTER_S), True)  # none has ever reported

    _worker_reports(now - timedelta(seconds=1))
    assert _idle(job_id, now)[1] is False  # one online: the usual minute
    with session_scope() as session:
        workers.report_stopped(session, name="w1@host", pid=10, now=now)
    assert _idle(job_id, now)[1] is True
    _worker_reports(now - timedelta(seconds=16), pid=11)  # three heartbeats of 5 s missed: lost
    assert _idle(job_id, now)[1] is True
    _worker_reports(now, pid=11)
    assert _idle(job_id, now)[1] is False


def test_a_finished_job_waits_for_nothing(migrated):
    now = utcnow()
    job_id = _job(1)
    with session_scope() as session:
        _send(session, job_id, ago_s=3600, now=now)
        _finish(session, job_id, 0, started_ago_s=3000, finished_ago_s=2000, now=now)
    assert _idle(job_id, now) == (None, False)
