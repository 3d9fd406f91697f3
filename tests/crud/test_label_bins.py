"""Label bins (migration 0010's trigger) against a recount of the labels, on SQLite and
PostgreSQL: whatever path an insert takes, each label it really adds is counted once, and the
statistics and digests read from the bins equal those counted over the labels."""

import importlib
import threading

import numpy as np
import pytest
from sqlalchemy import Double, cast, func, select, text

from service.core.db import session_scope
from service.crud import label_bins
from service.crud.stats import BIN_EDGES, class_aggregates
from service.models import Label, LabelBin
from tests.utils import synthetic
from tests.utils.statements import recorded
from workers.label_writes import insert_ignoring_duplicates

CLASSES = ["cat", "dog", "eel"]
# Confidences on and either side of steps (as float32, which the labels table stores).
EDGES = [0.0, 0.01, 0.29, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0]  # 0.7 and 0.9 as float32 lie below them
NEAR_EDGES = [float(np.nextafter(np.float32(e), np.float32(d))) for e in EDGES for d in (0, 2)]


@pytest.fixture
def job(backend):
    synthetic.migrate()
    return synthetic.finished_job(synthetic.teacher(CLASSES), [(0, 0.5), (2, 0.3)]).id


def _rows(job_id: int, item_ids, rng: np.random.Generator) -> list[dict]:
    confidences = [*EDGES, *NEAR_EDGES, *rng.uniform(0, 1, size=len(item_ids))]
    return [
        synthetic.label_row(
            job_id, int(item), int(rng.integers(3)), confidences[i % len(confidences)], 3, None
        )
        for i, item in enumerate(item_ids)
    ]


def _recount(job_id: int) -> dict:
    sql = f"""
        SELECT predicted, step, count(*), sum(item_id) FROM (
            SELECT predicted, item_id, {label_bins.grid_step_sql("confidence")} AS step
            FROM labels WHERE job_id = :job
        ) AS stepped GROUP BY predicted, step"""
    with session_scope() as session:
        return {(p, s): (n, i) for p, s, n, i in session.execute(text(sql), {"job": job_id})}


def _stored(job_id: int) -> dict:
    with session_scope() as session:
        rows = session.execute(
            select(LabelBin.predicted, LabelBin.step, LabelBin.label_count, LabelBin.item_id_sum).where(
                LabelBin.job_id == job_id
            )
        )
        return {(p, s): (n, i) for p, s, n, i in rows}


def test_every_label_an_insert_adds_is_counted_once(job):
    rng = np.random.default_rng(0)
    first, overlapping = _rows(job, range(1000, 1400), rng), _rows(job, range(1300, 1700), rng)
    for batch in (first, first, overlapping, first[:10]):  # a redelivered shard, a lagging copy
        with session_scope() as session:
            insert_ignoring_duplicates(session, Label, batch)
    stored = _stored(job)
    assert sum(n for n, _ in stored.values()) == 2 + 700
    assert stored == _recount(job)
    with session_scope() as session:
        direct = session.execute(
            select(func.count(), func.sum(Label.item_id), func.sum(Label.predicted)).where(
                Label.job_id == job
            )
        ).one()
        assert label_bins.job_digest(session, job) == tuple(direct)
        assert label_bins.job_digest(session, job + 1) == (0, 0, 0)
    with session_scope() as session:  # a job's labels are deleted only with it; its bins go too
        session.execute(text("DELETE FROM jobs WHERE id = :job"), {"job": job})
    assert _stored(job) == {} == _recount(job)


@pytest.mark.postgres
def test_concurrent_writers_of_one_job_neither_deadlock_nor_miscount(pg_url, monkeypatch):
    monkeypatch.setenv("NST_DATABASE_URL", pg_url)
    synthetic.migrate()
    job = synthetic.finished_job(synthetic.teacher(CLASSES), []).id
    failures = []

    def write(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for start in range(0, 3000, 150):  # the two writers' items overlap by half
                with session_scope() as session:
                    insert_ignoring_duplicates(session, Label, _rows(job, range(start, start + 200), rng))
        except Exception as error:  # a deadlock would surface here
            failures.append(error)

    threads = [threading.Thread(target=write, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    stored = _stored(job)
    assert sum(n for n, _ in stored.values()) == 3050
    assert stored == _recount(job)


@pytest.mark.parametrize("threshold", [0.3, 0.7, 0.333])  # on the grid (bins only) and off it
def test_statistics_from_the_bins_equal_those_counted_over_the_labels(job, threshold):
    with session_scope() as session:
        insert_ignoring_duplicates(session, Label, _rows(job, range(1000, 1500), np.random.default_rng(1)))
        with recorded(session.get_bind()) as statements:
            aggregates = class_aggregates(session, job_id=job, num_classes=3, threshold=threshold)
        # One statement, one snapshot: counts at an off-grid threshold from the labels and the rest
        # from the bins must not come from two moments of a job being written.
        assert len(statements) == 1, statements
        # As stored: psycopg reads a REAL as the double nearest its shortest text (0.7, not
        # float32(0.7)), which the database never compares.
        stored = cast(Label.confidence, Double)
        labels = session.execute(select(Label.predicted, stored).where(Label.job_id == job)).all()
    for predicted, aggregate in enumerate(aggregates):
        confidences = [c for p, c in labels if p == predicted]
        histogram = [0] * 10
        for c in confidences:
            histogram[next((i for i in range(9) if c < BIN_EDGES[i + 1]), 9)] += 1
        assert aggregate.count == len(confidences)
        assert aggregate.above == sum(c >= threshold for c in confidences)
        assert aggregate.histogram == histogram
        assert aggregate.confidence_sum == pytest.approx(sum(confidences), rel=1e-9)


def test_the_migration_computes_steps_as_the_readers_do():
    migration = importlib.import_module("migrations.versions.0010_label_bins")
    assert migration._step("confidence") == label_bins.grid_step_sql("confidence")


def _migrate(revision: str) -> None:
    from alembic import command

    from service.core.db import get_engine
    from service.core.migrate import alembic_config

    config = alembic_config()
    with get_engine().begin() as connection:
        config.attributes["connection"] = connection
        if revision == "head":
            command.upgrade(config, revision)
        else:
            command.downgrade(config, revision)


def test_the_migration_bins_the_labels_written_before_it(job):
    _migrate("0009")  # no bins, no trigger: labels written as before the migration
    with session_scope() as session:
        insert_ignoring_duplicates(session, Label, _rows(job, range(1000, 1300), np.random.default_rng(3)))
    _migrate("head")
    stored = _stored(job)
    assert sum(n for n, _ in stored.values()) == 302
    assert stored == _recount(job)
    with session_scope() as session:  # and the trigger counts what comes after
        insert_ignoring_duplicates(session, Label, _rows(job, range(1200, 1400), np.random.default_rng(4)))
    assert _stored(job) == _recount(job)
