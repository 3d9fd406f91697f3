"""Time a /metrics scrape on PostgreSQL next to a job of 1,000,000 synthetic labels, then again
with a long history of finished jobs' shards and item errors, through the real endpoint
(in-process).

    .venv/bin/python -m bench.metrics_scrape [--labels 1000000] [--history-shards 100000]
        [--item-errors 100000]

The database's figures are aggregates over the shards table (one row per shard), never over the
labels, so the scrape should not grow with the labels; the item errors by kind are counted over
their own table. Baseline, measured in the same run: the
one aggregate over the labels a naive exporter would run each scrape, ``SELECT count(*) FROM
labels``. The history rows are shards of extra finished jobs (no labels behind them): 100,000
shards stand for 100,000,000 labels at the default shard size of 1,000. Uses a fresh database on
NST_TEST_PG_ADMIN_URL's server, dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import sqlalchemy as sa

from bench.common import median_time, postgres_database, print_table
from bench.label_store import populate

REPEAT = 7


def add_history(engine: sa.Engine, *, shards: int, per_job: int = 1000) -> None:
    """Finished jobs of ``per_job`` succeeded shards each, on the job's dataset and teacher."""
    with engine.begin() as conn:
        teacher, dataset = conn.execute(sa.text("SELECT teacher_id, dataset_id FROM jobs LIMIT 1")).one()
        for _ in range(shards // per_job):
            job_id = conn.scalar(
                sa.text(
                    "INSERT INTO jobs (teacher_id, dataset_id, batch_size, temperature, top_k, "
                    "full_distribution_max, shard_size, num_classes, items_total, shards_total, created_at) "
                    "VALUES (:t, :d, 256, 1.0, 10, 100, 1000, 1000, :n, :s, now()) RETURNING id"
                ),
                {"t": teacher, "d": dataset, "n": per_job * 1000, "s": per_job},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO shards (job_id, index, start_ordinal, end_ordinal, state, items_done, "
                    "items_failed, attempts, started_at, finished_at) "
                    "SELECT :j, i, i * 1000, i * 1000 + 1000, 'succeeded', 1000, 0, 1, now(), now() "
                    "FROM generate_series(0, :s - 1) AS i"
                ),
                {"j": job_id, "s": per_job},
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))


def add_item_errors(engine: sa.Engine, count: int) -> None:
    """``count`` item errors, one in ten transient, on the first history job."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO item_errors (job_id, item_id, message, kind) "
                "SELECT (SELECT max(id) FROM jobs), i, 'cannot identify image file', "
                "CASE WHEN i % 10 = 0 THEN 'transient' ELSE 'permanent' END "
                "FROM generate_series(1, :n) AS i"
            ),
            {"n": count},
        )
        conn.execute(sa.text("ANALYZE item_errors"))


def count_labels(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT count(*) FROM labels"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--history-shards", type=int, default=100_000)
    parser.add_argument("--item-errors", type=int, default=100_000, help="added last")
    args = parser.parse_args()

    with postgres_database() as url:
        os.environ["NST_DATABASE_URL"] = url
        os.environ["NST_DATA_DIR"] = tempfile.mkdtemp(prefix="nst-bench-")
        _run(url, args)


def _run(url: str, args) -> None:
    from fastapi.testclient import TestClient

    from service.core.db import make_engine
    from service.core.migrate import upgrade_head
    from service.main import create_app

    engine = make_engine(url)
    upgrade_head(engine)
    start = time.perf_counter()
    populate(engine, labels=args.labels, num_classes=1000)
    print(f"PostgreSQL, {args.labels:,} labels (written in {time.perf_counter() - start:.1f} s)\n")

    rows = []
    with TestClient(create_app(), base_url="http://localhost") as client:  # a host NST_ALLOWED_HOSTS allows

        def scrape() -> str:
            response = client.get("/metrics")
            assert response.status_code == 200, response.text
            return response.text

        # The job alone, then with the history's shards, then with the item errors too.
        for stage in ("job", "history", "errors"):
            if stage == "history":
                add_history(engine, shards=args.history_shards)
            elif stage == "errors":
                add_item_errors(engine, args.item_errors)
            with engine.connect() as conn:
                errors = conn.scalar(sa.text("SELECT count(*) FROM item_errors"))
            with engine.connect() as conn:
                shards = conn.scalar(sa.text("SELECT count(*) FROM shards"))
            scrape()  # warm: the first scrape opens the connections
            took, text = median_time(scrape, REPEAT)
            base, counted = median_time(lambda: count_labels(engine), REPEAT)
            assert counted == args.labels
            written = next(line for line in text.splitlines() if line.startswith("nst_labels_written_total"))
            rows.append(
                (
                    f"{args.labels:,}",
                    f"{shards:,}",
                    f"{errors:,}",
                    f"{took * 1000:.1f}",
                    f"{base * 1000:.1f}",
                    f"{took / base:.2f}",
                    written.split()[1],
                )
            )
    print_table(
        [
            "labels",
            "shards",
            "item errors",
            "scrape ms (median)",
            "baseline: count(*) labels, ms",
            "ratio",
            "nst_labels_written_total",
        ],
        rows,
        target="a scrape well under the baseline, and flat in the labels",
    )


if __name__ == "__main__":
    main()
