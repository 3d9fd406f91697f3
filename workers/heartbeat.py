"""Each worker's main process reports itself every ``NST_HEARTBEAT_S`` (its node name, process,
device, concurrency and software; ``service.crud.workers``), and that it stopped when it shuts down
cleanly, so the service can list the workers that are up (``GET /workers``) and a waiting job
can say that none is. A report that fails (the database away) is logged and the next one tries
again; until then the service counts the worker as up for three heartbeats."""

from __future__ import annotations

import logging
import os

from celery import bootsteps

from nst import software
from nst.config import get_settings
from service.core.db import session_scope
from service.crud import workers as crud
from workers.teacher_model import resolve_device

logger = logging.getLogger(__name__)


class Heartbeat(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs) -> None:
        super().__init__(worker, **kwargs)
        self.timer_ref = None
        self.identity: dict = {}

    def start(self, worker) -> None:
        settings = get_settings()
        self.identity = {
            "name": worker.hostname,
            "pid": os.getpid(),
            "device": str(resolve_device(settings.worker_device)),
            "concurrency": worker.concurrency or 1,
            "heartbeat_s": settings.heartbeat_s,
            "software": software.installed(),
        }
        self.beat()
        self.timer_ref = worker.timer.call_repeatedly(settings.heartbeat_s, self.beat, priority=10)

    def stop(self, worker) -> None:
        if self.timer_ref is None:
            return
        self.timer_ref.cancel()
        self.timer_ref = None
        try:
            with session_scope() as session:
                crud.report_stopped(session, name=self.identity["name"], pid=self.identity["pid"])
        except Exception:  # the service will call it lost after three heartbeats instead
            logger.warning("heartbeat: could not report the stop", exc_info=True)

    def beat(self) -> None:
        try:
            with session_scope() as session:
                crud.report(session, **self.identity)
        except Exception:
            logger.warning("heartbeat: report failed", exc_info=True)
