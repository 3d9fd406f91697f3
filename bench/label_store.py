"""Time job statistics and manifest builds at scale: 1,000,000 synthetic labels in 1,000 classes
(top-10 storage, as a worker writes them beyond 100 classes), a labeled train split of 13 images
per class, all through the real HTTP endpoints (in-process).

    .venv/bin/python -m bench.label_store [--labels 1000000] [--classes 1000] [--database sqlite]

Each endpoint is set against a baseline measured in the same run: for statistics, fetching
(predicted, confidence) into numpy and aggregating there; for a manifest, one bare INSERT ...
SELECT that writes the very rows the build wrote (copied from it, in item order, under a spare
key of manifest_entries, committed): the floor for writing those entries, without selecting
them. Builds and baselines alternate, and the ratio is of their medians. Targets: stats < 1 s,
manifest < 15 s and <= 1.5x its baseline. PostgreSQL uses a fresh database on
NST_TEST_PG_ADMIN_URL's server, dropped afterwards; SQLite a file in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import sqlalchemy as sa

from bench.common import median_time, postgres_database

TOP_K = 10


def _copy(engine: sa.Engine, table: str, columns: list[str], rows) -> None:
    raw = engine.raw_connection()
    try:
        if engine.dialect.name == "sqlite":
            marks = ", ".join("?" * len(columns))
            raw.cursor().executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
            raw.commit()
            return
        with (
            raw.driver_connection.cursor() as cursor,
            cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
        raw.commit()
    finally:
        raw.close()


def _labels(rng: np.random.Generator, n: int, num_classes: int):
    """Skewed classes (some far above any target, some short of it) and Beta confidences."""
    weights = 1.0 / np.arange(1, num_classes + 1) ** 0.8
    predicted = rng.choice(num_classes, size=n, p=weights / weights.sum())
    confidence = rng.beta(2.0, 1.2, size=n).astype(np.float32)
    others = rng.dirichlet(np.ones(TOP_K - 1), size=n).astype(np.float32) * (1 - confidence[:, None]) * 0.8
    return predicted, confidence, others


def populate(engine: sa.Engine, *, labels: int, num_classes: int, seed: int = 0) -> tuple[int, int]:
    from bench.synthetic import job_options, placeholder_dataset, placeholder_teacher
    from service.core.db import session_scope
    from service.crud.jobs import create_job
    from service.models import Shard, utcnow

    names = [f"class-{i:04d}" for i in range(num_classes)]
    with session_scope() as session:
        teacher = placeholder_teacher(
            "b" * 64,
            names,
            architecture="resnet50",
            image_size=224,
            channels=3,
            mean=[0.5] * 3,
            std=[0.5] * 3,
            interpolation="bicubic",
            crop_pct=0.875,
        )
        pool = placeholder_dataset("pool", item_count=labels)
        labeled = placeholder_dataset(
            "labeled", kind="labeled", split="train", classes=names, item_count=13 * num_classes
        )
        session.add_all([teacher, pool, labeled])
        session.flush()
        pool_id, labeled_id = pool.id, labeled.id
    _copy(
        engine,
        "items",
        ["dataset_id", "ordinal", "uri", "label"],
        ((pool_id, i, f"/bench/pool/{i:07d}.jpg", None) for i in range(labels)),
    )
    _copy(
        engine,
        "items",
        ["dataset_id", "ordinal", "uri", "label"],
        (
            (labeled_id, i, f"/bench/labeled/{i % num_classes}/{i}.jpg", i % num_classes)
            for i in range(13 * num_classes)
        ),
    )
    with session_scope() as session:
        job, _ = create_job(
            session,
            teacher_id="b" * 64,
            dataset_id=pool_id,
            items_total=labels,
            num_classes=num_classes,
            options=job_options(batch_size=256, shard_size=10_000, top_k=TOP_K),
        )
        session.execute(
            sa.update(Shard)
            .where(Shard.job_id == job.id)
            .values(state="succeeded", attempts=1, started_at=utcnow(), finished_at=utcnow())
        )
        session.execute(sa.text("UPDATE shards SET items_done = end_ordinal - start_ordinal"))
        job_id = job.id
    with engine.connect() as conn:
        first_item = conn.scalar(sa.text("SELECT min(id) FROM items WHERE dataset_id = :d"), {"d": pool_id})
    rng = np.random.default_rng(seed)
    predicted, confidence, others = _labels(rng, labels, num_classes)

    def rows():
        for i in range(labels):
            c = int(predicted[i])
            top = np.concatenate([[c], (c + 1 + np.arange(TOP_K - 1)) % num_classes]).astype(np.int32)
            probs = np.concatenate([[confidence[i]], others[i]]).astype(np.float16)
            rest = max(0.0, 1.0 - float(probs.astype(np.float32).sum()))
            yield (job_id, first_item + i, c, float(confidence[i]), 1.0, probs.tobytes(), top.tobytes(), rest)

    _copy(
        engine,
        "labels",
        ["job_id", "item_id", "predicted", "confidence", "entropy", "probs", "top_indices", "rest_mass"],
        rows(),
    )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE" if engine.dialect.name == "sqlite" else "VACUUM ANALYZE"))
    return job_id, labeled_id


def baseline_stats(engine: sa.Engine, job_id: int, num_classes: int) -> None:
    """The same numbers the way one would without SQL aggregates: fetch, then numpy."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"SELECT predicted, confidence FROM labels WHERE job_id = {job_id}").all()
    predicted, confidence = (np.asarray(column) for column in zip(*rows, strict=True))
    np.bincount(predicted, minlength=num_classes)
    np.bincount(predicted, weights=confidence >= 0.3, minlength=num_classes)
    np.bincount(predicted, weights=confidence, minlength=num_classes)
    np.histogram2d(predicted, confidence, bins=[num_classes, 10], range=[[0, num_classes], [0, 1]])


SPARE_KEY = -1  # no manifest has it; entries have no foreign key


def baseline_same_rows(engine: sa.Engine, manifest_key: int) -> float:
    """The seconds one bare INSERT ... SELECT takes to write the rows the build wrote (same table,
    same key, item order), committed; the copy is removed afterwards, untimed."""
    start = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO manifest_entries SELECT :spare, item_id, source, job_id, target_class, "
                "copies, confidence FROM manifest_entries WHERE manifest_key = :k ORDER BY item_id"
            ),
            {"spare": SPARE_KEY, "k": manifest_key},
        )
    took = time.perf_counter() - start
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM manifest_entries WHERE manifest_key = :k"), {"k": SPARE_KEY})
    return took


def _delete_manifest(engine: sa.Engine, manifest_id: str) -> None:
    with engine.begin() as conn:  # entries have no foreign key; the rest cascades
        key = conn.scalar(sa.text("SELECT key FROM manifests WHERE id = :m"), {"m": manifest_id})
        conn.execute(sa.text("DELETE FROM manifest_entries WHERE manifest_key = :k"), {"k": key})
        conn.execute(sa.text("DELETE FROM manifests WHERE key = :k"), {"k": key})


def _time_build(client, engine, body: dict, repeat: int = 3) -> tuple[float, float, dict]:
    """Median seconds to build the manifest afresh (201) and to write its rows bare, alternating;
    each build first deletes the last one."""
    builds, baselines, manifest = [], [], None
    for _ in range(repeat):
        if manifest is not None:
            _delete_manifest(engine, manifest["id"])
        start = time.perf_counter()
        response = client.post("/manifests", json=body)
        builds.append(time.perf_counter() - start)
        assert response.status_code == 201, response.text
        manifest = response.json()
        with engine.connect() as conn:
            key = conn.scalar(sa.text("SELECT key FROM manifests WHERE id = :m"), {"m": manifest["id"]})
        baselines.append(baseline_same_rows(engine, key))
    return statistics.median(builds), statistics.median(baselines), manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    args = parser.parse_args()

    os.environ["NST_DATA_DIR"] = data_dir = tempfile.mkdtemp(prefix="nst-bench-")
    try:
        with postgres_database() if args.database == "postgresql" else nullcontext() as url:
            url = url or f"sqlite:///{data_dir}/bench.db"
            os.environ["NST_DATABASE_URL"] = url
            _run(url, args)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _run(url: str, args) -> None:
    from fastapi.testclient import TestClient

    from service.core.db import make_engine
    from service.core.migrate import upgrade_head
    from service.main import create_app

    engine = make_engine(url)
    upgrade_head(engine)
    start = time.perf_counter()
    job_id, labeled_id = populate(engine, labels=args.labels, num_classes=args.classes)
    print(
        f"{engine.dialect.name}, {args.labels:,} labels in {args.classes:,} classes "
        f"(written in {time.perf_counter() - start:.1f} s)\n"
    )

    with TestClient(create_app(), base_url="http://localhost") as client:  # a host NST_ALLOWED_HOSTS allows
        base, _ = median_time(lambda: baseline_stats(engine, job_id, args.classes))
        took, stats = median_time(
            lambda: client.get(f"/jobs/{job_id}/stats", params={"threshold": 0.3}).json()
        )
        print(
            f"stats         {took:6.2f} s   baseline (fetch + numpy) {base:6.2f} s   ratio {took / base:4.2f}"
            f"   target < 1 s"
        )
        chart, _ = median_time(lambda: client.get(f"/jobs/{job_id}/stats/chart").content)
        print(f"stats chart    {chart:6.2f} s")
        print(
            f"               {stats['totals']['above_threshold']:,} of {stats['totals']['pseudo_labeled']:,} "
            f"at or above 0.3; imbalance {stats['imbalance_ratio_above_threshold']:.1f}\n"
        )

        cases = {
            "manifest, top-first": {"job_ids": [job_id], "labeled_dataset_ids": [labeled_id]},
            "manifest, per-class thresholds": {
                "job_ids": [job_id],
                "labeled_dataset_ids": [labeled_id],
                "per_class_thresholds": True,
            },
            "manifest, labeled distribution x100": {
                "job_ids": [job_id],
                "labeled_dataset_ids": [labeled_id],
                "target_mode": "labeled_distribution",
                "target_per_class": 100,
            },
            "manifest, no balancing": {
                "job_ids": [job_id],
                "labeled_dataset_ids": [labeled_id],
                "balance": False,
            },
        }
        for label, body in cases.items():
            took, base, manifest = _time_build(client, engine, body)
            totals = manifest["totals"]
            print(
                f"{label:36s} {took:6.2f} s   baseline (same rows, bare) {base:6.2f} s   "
                f"ratio {took / base:4.2f}   {totals['entries']:,} entries, {totals['samples']:,} samples"
            )
            _delete_manifest(engine, manifest["id"])

        body = cases["manifest, top-first"]
        client.post("/manifests", json=body)
        again, _ = median_time(lambda: client.post("/manifests", json=body))
        print(f"{'manifest, same request again (200)':36s} {again:6.2f} s")
        manifest_id = client.post("/manifests", json=body).json()["id"]
        page, _ = median_time(lambda: client.get(f"/manifests/{manifest_id}/entries", params={"limit": 5000}))
        print(f"{'entries, one JSON page of 5,000 (soft)':36s} {page:6.2f} s")
    engine.dispose()


if __name__ == "__main__":
    main()
