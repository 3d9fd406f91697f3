"""Bytes one stored label costs on disk, on PostgreSQL and on SQLite, written the way a worker
writes them (``workers.label_writes.insert_ignoring_duplicates``): 10 classes stored whole, and
1,000 classes stored as the top 10 plus the remaining mass.

    .venv/bin/python -m bench.label_bytes [--labels 100000]

PostgreSQL: ``pg_total_relation_size('labels')`` (heap, primary-key index, TOAST) per label;
SQLite: the whole database file per label. Uses a fresh database on the local server, dropped.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bench.common import postgres_database
from bench.synthetic import placeholder_dataset, placeholder_teacher
from service.core.db import make_engine
from service.core.migrate import upgrade_head
from service.models import Job, Label
from workers.label_writes import insert_ignoring_duplicates

TOP_K = 10


def _rows(start: int, stop: int, classes: int, keep_all: bool, rng) -> list[dict]:
    rows = []
    for item_id in range(start, stop):
        p = rng.dirichlet(np.ones(classes)).astype(np.float32)
        if keep_all:
            probs, indices, rest = p.astype(np.float16).tobytes(), None, None
        else:
            top = np.argsort(-p)[:TOP_K]
            probs, indices = p[top].astype(np.float16).tobytes(), top.astype(np.int32).tobytes()
            rest = float(1 - p[top].sum())
        rows.append(
            {
                "job_id": 1,
                "item_id": item_id,
                "predicted": int(p.argmax()),
                "confidence": float(p.max()),
                "entropy": 1.0,
                "probs": probs,
                "top_indices": indices,
                "rest_mass": rest,
            }
        )
    return rows


def fill(engine, n: int, classes: int, keep_all: bool) -> None:
    upgrade_head(engine)
    with Session(engine) as session:
        session.add(placeholder_dataset("d", id=1, source_path="/", source_format="folder", item_count=n))
        session.flush()
        session.add(placeholder_teacher("t", [str(i) for i in range(classes)]))
        session.flush()
        session.add(
            Job(
                id=1,
                teacher_id="t",
                dataset_id=1,
                batch_size=1,
                temperature=1.0,
                top_k=TOP_K,
                full_distribution_max=100,
                shard_size=1000,
                num_classes=classes,
                items_total=n,
                shards_total=1,
            )
        )
        session.flush()
        rng = np.random.default_rng(0)
        for start in range(0, n, 10_000):
            insert_ignoring_duplicates(
                session, Label, _rows(start, min(n, start + 10_000), classes, keep_all, rng)
            )
        session.commit()


def postgres_bytes(n: int, classes: int, keep_all: bool) -> float:
    with postgres_database() as url:
        engine = make_engine(url)
        fill(engine, n, classes, keep_all)
        with engine.connect() as conn:
            total = conn.execute(sa.text("SELECT pg_total_relation_size('labels')")).scalar()
        engine.dispose()
    return total / n


def sqlite_bytes(n: int, classes: int, keep_all: bool) -> float:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.db"
        engine = make_engine(f"sqlite:///{path}")
        fill(engine, n, classes, keep_all)
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        return path.stat().st_size / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=100_000)
    n = parser.parse_args().labels
    for classes, keep_all in [(10, True), (1000, False)]:
        stored = "whole distribution" if keep_all else f"top {TOP_K} + rest mass"
        print(
            f"{classes:>5} classes, {stored}: PostgreSQL {postgres_bytes(n, classes, keep_all):.1f} "
            f"B/label, SQLite {sqlite_bytes(n, classes, keep_all):.1f} B/label ({n} labels)"
        )


if __name__ == "__main__":
    main()
