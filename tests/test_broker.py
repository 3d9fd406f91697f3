"""The embedded broker (kombu's SQLAlchemy transport) with several processes at once."""

from __future__ import annotations

import multiprocessing

import kombu

PROCESSES = 8
ROUNDS = 8  # a new broker each, first used by every process at once: the races are won at random


def _declare(urls: list[str], start, errors) -> None:
    import service.queue  # noqa: F401  (what the API and every worker import: its kombu fixes)

    for url in urls:
        start.wait()
        try:
            with kombu.Connection(url) as connection:
                kombu.Queue("nst").bind(connection.default_channel).declare()
        except Exception as exc:  # reported to the test, which names it
            errors.put(repr(exc))


def test_processes_first_using_a_new_broker_at_once_all_get_its_queue(tmp_path):
    """Workers started together on a new broker: kombu's own lock is per process, and the slower
    one's "table already exists" or UNIQUE violation on the queue's row ended it."""
    urls = [f"sqla+sqlite:///{tmp_path / f'broker-{i}.db'}" for i in range(ROUNDS)]
    context = multiprocessing.get_context("fork")
    start, errors = context.Barrier(PROCESSES), context.Queue()
    processes = [context.Process(target=_declare, args=(urls, start, errors)) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    failed = []
    while not errors.empty():
        failed.append(errors.get())
    assert failed == [] and [p.exitcode for p in processes] == [0] * PROCESSES
