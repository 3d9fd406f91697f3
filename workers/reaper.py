"""The reaper: a timer in every worker's main process that sends again the shards nobody works
on (``service.lifecycle.reap`` decides which), so a job finishes by itself after a fault.

It lives in the workers because only a worker can label a shard it sends: with no worker up
there is nothing to recover, and a worker that starts after a crash recovers what the crash
left behind. Every worker runs one; they never send a shard twice, because a reap is a
conditional update of rows the others skip while it holds them (PostgreSQL) or wait for
(SQLite's one writer), and a duplicate message would still cost only a duplicate delivery.
"""

from __future__ import annotations

import logging
import time

from celery import bootsteps

from nst.config import get_settings
from service.core.db import session_scope
from service.lifecycle import reap
from service.queue import enqueue_shards

logger = logging.getLogger(__name__)


def reap_once(*, check_unclaimed: bool = True) -> list[int]:
    """One sweep: take back abandoned shards and send them again; return their ids. A send that
    fails leaves them queued as just sent, so a later sweep sends them again."""
    settings = get_settings()
    with session_scope() as session:
        shard_ids = reap(
            session,
            unclaimed_s=settings.unclaimed_s if check_unclaimed else None,
            max_attempts=settings.shard_max_attempts,
        )
    enqueue_shards(shard_ids)
    return shard_ids


class Reaper(bootsteps.StartStopStep):
    """Runs ``reap_once`` every ``NST_REAPER_INTERVAL_S`` on the worker's timer."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs) -> None:
        super().__init__(worker, **kwargs)
        self.timer_ref = None
        self.started = 0.0

    def start(self, worker) -> None:
        self.started = time.monotonic()
        interval = get_settings().reaper_interval_s
        self.timer_ref = worker.timer.call_repeatedly(interval, self.sweep, priority=10)

    def stop(self, worker) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None

    def sweep(self) -> None:
        # A fresh worker first consumes what is already queued: only then is an unclaimed shard
        # one whose message was lost.
        settled = time.monotonic() - self.started >= get_settings().unclaimed_s
        try:
            reap_once(check_unclaimed=settled)
        except Exception:  # the database or the broker is away: the next sweep tries again
            logger.warning("reaper: sweep failed", exc_info=True)
