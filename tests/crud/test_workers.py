"""Workers as they report themselves (service.crud.workers) and as GET /workers lists them:
online while they report, stopped after a clean shutdown, lost once silent for three heartbeats,
forgotten after a day."""

from __future__ import annotations

from datetime import timedelta

import pytest

from nst.states import WorkerState
from service.core.db import session_scope
from service.crud import workers as crud
from service.models import utcnow
from tests.utils import synthetic

WORKER = {"device": "cpu", "concurrency": 2, "heartbeat_s": 5.0}


@pytest.fixture(autouse=True)
def _schema(request):
    if "backend" in request.fixturenames:
        request.getfixturevalue("backend")  # its database, before the schema goes in
    synthetic.migrate()


def _states(now) -> list[tuple[str, int, WorkerState]]:
    with session_scope() as session:
        return [(s.worker.name, s.worker.pid, s.state) for s in crud.list_workers(session, now=now)]


@pytest.mark.usefixtures("backend")
def test_a_worker_is_online_while_it_reports_and_lost_after_three_missed_heartbeats():
    start = utcnow()
    with session_scope() as session:
        crud.report(session, name="w1@host", pid=10, now=start, **WORKER)
    assert _states(start + timedelta(seconds=14)) == [("w1@host", 10, WorkerState.ONLINE)]
    assert _states(start + timedelta(seconds=16)) == [("w1@host", 10, WorkerState.LOST)]
    with session_scope() as session:  # it reports again: back online, started when it first did
        crud.report(session, name="w1@host", pid=10, now=start + timedelta(seconds=20), **WORKER)
    assert _states(start + timedelta(seconds=21)) == [("w1@host", 10, WorkerState.ONLINE)]
    with session_scope() as session:
        (status,) = crud.list_workers(session, now=start + timedelta(seconds=21))
        assert status.worker.started_at == start and status.silent_s == 1.0


@pytest.mark.usefixtures("backend")
def test_a_clean_stop_is_stopped_and_a_restart_is_a_new_process_listed_first():
    start = utcnow()
    with session_scope() as session:
        crud.report(session, name="w1@host", pid=10, now=start, **WORKER)
        crud.report(session, name="w0@host", pid=11, now=start, **WORKER)
    with session_scope() as session:
        crud.report_stopped(session, name="w1@host", pid=10, now=start + timedelta(seconds=1))
        crud.report(session, name="w1@host", pid=12, now=start + timedelta(seconds=2), **WORKER)
    assert _states(start + timedelta(seconds=3)) == [
        ("w0@host", 11, WorkerState.ONLINE),
        ("w1@host", 12, WorkerState.ONLINE),
        ("w1@host", 10, WorkerState.STOPPED),
    ]


@pytest.mark.usefixtures("backend")
def test_a_worker_silent_for_a_day_is_forgotten_by_the_next_report():
    start = utcnow()
    with session_scope() as session:
        crud.report(session, name="gone@host", pid=10, now=start, **WORKER)
    later = start + crud.FORGET_AFTER + timedelta(seconds=1)
    assert _states(later) == []  # not listed
    with session_scope() as session:
        crud.report(session, name="w1@host", pid=11, now=later, **WORKER)
    assert _states(start) == [("w1@host", 11, WorkerState.ONLINE)]  # and no longer stored


def test_get_workers_lists_them_with_their_state_and_the_online_count(client):
    now = utcnow()
    with session_scope() as session:
        crud.report(session, name="gpu@host", pid=7, now=now, **(WORKER | {"device": "cuda"}))
        crud.report(session, name="old@host", pid=8, now=now - timedelta(minutes=5), **WORKER)
    body = client.get("/workers").json()
    assert body["count"] == 2 and body["online"] == 1
    online, lost = body["data"]
    assert (online["name"], online["pid"], online["device"], online["state"]) == (
        "gpu@host",
        7,
        "cuda",
        "online",
    )
    assert online["concurrency"] == 2 and online["stopped_at"] is None
    assert (lost["name"], lost["state"]) == ("old@host", "lost") and 299 < lost["silent_s"] < 310
    assert online["last_seen_at"].endswith("+00:00")


def test_each_worker_says_what_it_runs_and_the_online_ones_that_differ_are_named(client, monkeypatch):
    from nst import software

    now = utcnow()
    runs = {"python": "3.11.2", "nst": "0.1.0", "torch": "2.14.1", "openvino": "2025.3.0"}
    monkeypatch.setattr(software, "installed", lambda: runs)  # the API runs what a@host does
    with session_scope() as session:
        crud.report(session, name="a@host", pid=1, now=now, software=runs, **WORKER)
        crud.report(session, name="b@host", pid=2, now=now, software=runs | {"torch": "2.13.0"}, **WORKER)
        crud.report(
            session, name="c@host", pid=3, now=now, software=runs | {"openvino": "2024.6.0"}, **WORKER
        )
        crud.report(session, name="old@host", pid=4, now=now - timedelta(minutes=5), software={}, **WORKER)
        crud.report(session, name="quiet@host", pid=5, now=now, **WORKER)  # reports no software
    body = client.get("/workers").json()
    by_name = {w["name"]: w["software"] for w in body["data"]}
    assert by_name["a@host"] == runs and by_name["quiet@host"] is None
    # The API and the online workers count, and only packages in more than one version.
    assert body["software_differs"] == {
        "openvino": {"2025.3.0": ["API", "a@host", "b@host"], "2024.6.0": ["c@host"]},
        "torch": {"2.14.1": ["API", "a@host", "c@host"], "2.13.0": ["b@host"]},
    }
    with session_scope() as session:  # the odd ones stop: nothing differs
        crud.report_stopped(session, name="b@host", pid=2)
        crud.report_stopped(session, name="c@host", pid=3)
    assert client.get("/workers").json()["software_differs"] == {}
    monkeypatch.setattr(software, "installed", lambda: runs | {"nst": "0.2.0"})  # the API upgraded alone
    assert client.get("/workers").json()["software_differs"] == {
        "nst": {"0.2.0": ["API"], "0.1.0": ["a@host"]}
    }
