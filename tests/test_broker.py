"""The embedded broker (kombu's SQLAlchemy transport) with several processes at once."""

from __future__ import annotations

import multiprocessing

import kombu

PROCESSES = 8
ROUNDS = 8  # a new queue each, declared by every process at once: the race is won at random


def _declare(url: str, start, errors) -> None:
    import service.queue  # noqa: F401  (what the API and every worker import: its kombu fixes)

    for round_ in range(ROUNDS):
        start.wait()
        try:
            with kombu.Connection(url) as connection:
                kombu.Queue(f"nst-{round_}").bind(connection.default_channel).declare()
        except Exception as exc:  # reported to the test, which names it
            errors.put(repr(exc))


def test_processes_declaring_a_new_queue_at_once_all_get_it(tmp_path):
    """Workers started together on a new broker: kombu's own lock is per process, and the
    slower one's UNIQUE violation on the queue's row ended it."""
    url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    with kombu.Connection(url) as connection:  # the tables, so that only the queue's row races
        kombu.Queue("other").bind(connection.default_channel).declare()
    context = multiprocessing.get_context("fork")
    start, errors = context.Barrier(PROCESSES), context.Queue()
    processes = [context.Process(target=_declare, args=(url, start, errors)) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    failed = []
    while not errors.empty():
        failed.append(errors.get())
    assert failed == [] and [p.exitcode for p in processes] == [0] * PROCESSES
