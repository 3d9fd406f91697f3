"""Label write rate: soft labels per second that one worker's write path stores, into PostgreSQL
and into SQLite, against the fastest bare bulk load of the same rows into the same table,
measured in the same run.

    .venv/bin/python -m bench.label_write_rate [--labels 200000] [--classes 10]
        [--batch-sizes 64,256,1024] [--shard-size 10000] [--backends sqlite,postgres] [--writers N]

The worker's path is timed from a batch of logits (made beforehand; the forward pass is not a
write) to the committed transaction: ``workers.soft_labels.soft_labels`` (softmax, confidence,
entropy, float16 distribution or top-k), then ``ShardWriter`` (INSERT .. ON CONFLICT DO NOTHING
of the labels with the shard's progress, one transaction per ``commit_rows`` labels or
``commit_seconds``, as the settings give them), shard after shard as a worker runs them. The
bare load writes the very same rows once, in one transaction, with the fastest plain tool each
database has: COPY on PostgreSQL (psycopg), ``executemany`` of a plain INSERT on SQLite
(sqlite3). With ``--writers N``, N writer processes on PostgreSQL write the same rows together
into one job, whose label bins they share, and into one job each, which share nothing (batch
1,024). Target: at least 50,000 labels/s on PostgreSQL. PostgreSQL runs in a fresh database
on NST_TEST_PG_ADMIN_URL's server, dropped afterwards; SQLite in a temp folder.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import sqlalchemy as sa
import torch

from bench.common import postgres_database, print_table
from nst.config import get_settings
from workers.label_writes import ShardWriter
from workers.soft_labels import soft_labels

COLUMNS = ["job_id", "item_id", "predicted", "confidence", "entropy", "probs", "top_indices", "rest_mass"]


def _use_database(url: str) -> None:
    """Point the service's settings and engine at ``url`` (they are cached per process)."""
    from nst.config import get_settings
    from service.core.db import get_engine, get_session_factory

    os.environ["NST_DATABASE_URL"] = url
    for cached in (get_settings, get_engine, get_session_factory):
        cached.cache_clear()


def _setup(num_items: int, num_classes: int, shard_size: int, jobs: int) -> tuple[list, list[int]]:
    """A teacher, a dataset of ``num_items`` items and ``jobs`` labeling jobs over it."""
    from bench.synthetic import job_options, placeholder_dataset, placeholder_teacher
    from service.core.db import get_engine, session_scope
    from service.core.migrate import upgrade_head
    from service.crud.jobs import create_job
    from service.models import Item, Job

    upgrade_head(get_engine())
    with session_scope() as session:
        session.add(placeholder_teacher("w" * 64, [f"class-{c}" for c in range(num_classes)]))
        pool = placeholder_dataset("pool", item_count=num_items)
        session.add(pool)
        session.flush()
        session.execute(
            sa.insert(Item),
            [{"dataset_id": pool.id, "ordinal": i, "uri": f"/bench/{i:07d}.png"} for i in range(num_items)],
        )
        made = []
        for _ in range(jobs):
            job, shards = create_job(
                session,
                teacher_id="w" * 64,
                dataset_id=pool.id,
                items_total=num_items,
                num_classes=num_classes,
                options=job_options(batch_size=64, shard_size=shard_size),
            )
            made.append((job.id, [s.id for s in shards]))
        item_ids = list(
            session.scalars(sa.select(Item.id).where(Item.dataset_id == pool.id).order_by(Item.ordinal))
        )
    with session_scope() as session:
        jobs_ = [(session.get(Job, job_id), shard_ids) for job_id, shard_ids in made]
    return jobs_, item_ids


def worker_path(
    job, shard_ids: list[int], item_ids: list[int], logits: torch.Tensor, batch: int, shard: int
) -> float:
    """Seconds for the worker's write path over every shard of ``job``."""
    settings = get_settings()
    start = time.perf_counter()
    for index, shard_id in enumerate(shard_ids):
        low, high = index * shard, min((index + 1) * shard, len(item_ids))
        writer = ShardWriter(
            shard_id, job, commit_rows=settings.commit_rows, commit_seconds=settings.commit_seconds
        )
        for b in range(low, high, batch):
            rows = soft_labels(
                logits[b : min(b + batch, high)],
                temperature=1.0,
                keep_all=job.stores_full_distribution,
                top_k=10,
            )
            for offset, row in enumerate(rows):
                row.update(job_id=job.id, item_id=item_ids[b + offset])
            writer.add(rows, [])
        writer.flush()
    return time.perf_counter() - start


def bare_rows(job_id: int, item_ids: list[int], logits: torch.Tensor, keep_all: bool) -> list[tuple]:
    """The same label rows as plain tuples (made before the bare clock starts)."""
    rows = soft_labels(logits, temperature=1.0, keep_all=keep_all, top_k=10)
    return [
        (
            job_id,
            item_id,
            r["predicted"],
            r["confidence"],
            r["entropy"],
            r["probs"],
            r["top_indices"],
            r["rest_mass"],
        )
        for item_id, r in zip(item_ids, rows, strict=True)
    ]


def bare_load(url: str, rows: list[tuple]) -> float:
    """Seconds to write ``rows`` into labels, one transaction, with the database's bulk tool."""
    if url.startswith("sqlite"):
        import sqlite3

        connection = sqlite3.connect(sa.engine.make_url(url).database)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        start = time.perf_counter()
        with connection:
            connection.executemany(
                f"INSERT INTO labels ({', '.join(COLUMNS)}) VALUES (?,?,?,?,?,?,?,?)", rows
            )
        seconds = time.perf_counter() - start
        connection.close()
        return seconds
    import psycopg

    with psycopg.connect(
        sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)
    ) as conn:
        start = time.perf_counter()
        with conn.cursor() as cursor, cursor.copy(f"COPY labels ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return time.perf_counter() - start


def run_backend(backend: str, url: str, args) -> list[tuple]:
    _use_database(url)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    jobs, item_ids = _setup(args.labels, args.classes, args.shard_size, jobs=len(batches) + 1)
    torch.manual_seed(0)
    logits = torch.randn(args.labels, args.classes) * 3
    results = []
    (bare_job, _), *worker_jobs = jobs
    bare_s = bare_load(url, bare_rows(bare_job.id, item_ids, logits, bare_job.stores_full_distribution))
    for batch, (job, shard_ids) in zip(batches, worker_jobs, strict=True):
        seconds = worker_path(job, shard_ids, item_ids, logits, batch, args.shard_size)
        results.append((backend, batch, args.labels / seconds, args.labels / bare_s))
        print(
            f"{backend:10s} batch {batch:5d}: worker {args.labels / seconds:9,.0f} labels/s, "
            f"bare {args.labels / bare_s:9,.0f} labels/s",
            flush=True,
        )
    return results


def _writer(
    url: str, job_id: int, shard_ids: list[int], item_ids: list[int], logits, shard: int, ready
) -> float:
    """One writer process: seconds for the worker path over its shards, once every writer is ready."""
    from service.core.db import session_scope
    from service.models import Job

    _use_database(url)
    torch.set_num_threads(1)
    with session_scope() as session:
        job = session.get(Job, job_id)
    ready.wait()
    return worker_path(job, shard_ids, item_ids, logits, 1024, shard)


def concurrent_writers(url: str, args) -> tuple[float, float]:
    """Labels/s of ``args.writers`` processes together writing the shards of one job (so sharing
    its label bins), and writing the same shares into one job each (sharing nothing)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    _use_database(url)
    n, shard = args.writers, args.shard_size
    jobs, item_ids = _setup(args.labels, args.classes, shard, jobs=n + 1)
    torch.manual_seed(0)
    logits = torch.randn(args.labels, args.classes) * 3
    shares = []  # writer w takes shards w, w + n, ...: their items and logits
    for w in range(n):
        rows = [
            k
            for s in range(w, len(jobs[0][1]), n)
            for k in range(s * shard, min((s + 1) * shard, args.labels))
        ]
        shares.append(([item_ids[k] for k in rows], logits[rows]))
    context = mp.get_context("spawn")
    rates = []
    for together in (True, False):
        with context.Manager() as manager, ProcessPoolExecutor(n, mp_context=context) as pool:
            ready = manager.Barrier(n)
            futures = []
            for w, (items, share_logits) in enumerate(shares):
                job, shard_ids = jobs[0] if together else jobs[1 + w]
                mine = shard_ids[w::n]
                futures.append(pool.submit(_writer, url, job.id, mine, items, share_logits, shard, ready))
            rates.append(args.labels / max(f.result() for f in futures))
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=200_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-sizes", default="64,256,1024")
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument(
        "--writers", type=int, default=0, help="also N writer processes on PostgreSQL: one job vs one each"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ["NST_DATA_DIR"] = tempfile.mkdtemp(prefix="nst-bench-")

    rows = []
    for backend in args.backends.split(","):
        if backend == "sqlite":
            rows += run_backend(backend, f"sqlite:///{os.environ['NST_DATA_DIR']}/write-rate.db", args)
            continue
        with postgres_database() as url:
            try:
                rows += run_backend(backend, url, args)
            finally:
                from service.core.db import get_engine

                get_engine().dispose()
        if args.writers:
            with postgres_database() as url:
                together, apart = concurrent_writers(url, args)
            print(
                f"postgres, {args.writers} writers, batch 1024: one job (shared label bins) "
                f"{together:,.0f} labels/s, one job each {apart:,.0f} labels/s, ratio {together / apart:.2f}",
                flush=True,
            )

    stored = "whole distribution" if args.classes <= 100 else "top-10 + rest mass"
    print(f"\n{args.labels:,} labels, {args.classes} classes ({stored}), shards of {args.shard_size:,}\n")
    print_table(
        ["database", "batch", "worker labels/s", "bare bulk load labels/s", "ratio"],
        ((b, n, f"{w:,.0f}", f"{bare:,.0f}", f"{w / bare:.2f}") for b, n, w, bare in rows),
        target=">= 50,000 labels/s on PostgreSQL",
    )


if __name__ == "__main__":
    main()
