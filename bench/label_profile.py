"""Where a labeling job's time goes: the worker's own code (``workers.labeling.label_shard``),
run in this process over every shard of a job, with each phase timed and cProfile over the
whole, beside the bare loop of bench/label_throughput.py on the same files in the same run.

    .venv/bin/python -m bench.label_profile [--images 3000] [--model resnet18] [--size 28]
        [--batch-size 64] [--shard-size 1000] [--workers 2] [--threads 2] [--top 25]

Phases: claiming the shard and listing its pending items (``start_shard``), building the model
(``cached_teacher``, first shard only), the forward passes, the per-batch commits (labels and
recounted progress), and the rest, which is the wait on the DataLoader (decode) plus its start.
No broker, no API process: this isolates the worker's loop from the stack around it.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import time
from collections import defaultdict
from pathlib import Path

import torch

from bench.common import bench_root, print_table


def _timed(table: dict, name: str, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            table[name] += time.perf_counter() - start

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="decode workers, both sides")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=25, help="cProfile rows to print; 0: no cProfile")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument(
        "--inference", default="eager", help="the job's inference mode (workers/inference.py)"
    )
    parser.add_argument(
        "--no-freeze",
        action="store_true",
        help="leave the heap unfrozen (a Celery pool process freezes it at start: workers/process_init.py)",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    root = bench_root(args.dir, "nst-profile-")
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    os.environ.update(NST_DATA_DIR=str(root / "nst"), NST_DATA_ROOTS=str(data))

    # Settings are read at import: these imports come after the environment is set.
    from fastapi.testclient import TestClient
    from sqlalchemy import select

    from bench.label_throughput import bare, make_teacher, write_images
    from nst.config import get_settings
    from service.core.db import session_scope
    from service.main import app
    from service.models import Shard
    from workers import label_writes, labeling, tasks
    from workers.teacher_model import cached_teacher

    if not args.no_freeze:
        gc.freeze()  # as a worker's pool process does once its imports are done, before any model

    folder = write_images(data, args.images)
    files = sorted(str(p) for p in folder.glob("*.png"))
    path, metadata = make_teacher(data, args.model, args.size, 0)
    with TestClient(app, base_url="http://localhost") as client:  # a host NST_ALLOWED_HOSTS allows
        dataset = client.post("/datasets", json={"name": "profile", "kind": "unlabeled", "path": str(folder)})
        with path.open("rb") as handle:
            teacher = client.post("/teachers/upload", files={"file": (path.name, handle)}).json()
        tasks.validate_teacher(teacher["id"])
        job = client.post(
            "/jobs",
            json={
                "teacher_id": teacher["id"],
                "dataset_id": dataset.json()["id"],
                "batch_size": args.batch_size,
                "shard_size": args.shard_size,
                "inference": args.inference,
            },
        ).json()
    with session_scope() as session:
        shard_ids = list(
            session.scalars(select(Shard.id).where(Shard.job_id == job["id"]).order_by(Shard.index))
        )

    bare(path, metadata, files[: 2 * args.batch_size], args.batch_size, 0)  # warm-up, untimed
    bare_s = bare(path, metadata, files, args.batch_size, args.workers)

    configured = get_settings()
    settings = labeling.LabelingSettings(
        device="cpu",
        decode_workers=args.workers,
        commit_rows=configured.commit_rows,
        commit_seconds=configured.commit_seconds,
    )
    phases: dict[str, float] = defaultdict(float)
    labeling.start_shard = _timed(phases, "claim shard, list items", labeling.start_shard)
    labeling.cached_teacher = _timed(phases, "build model (once)", cached_teacher)
    labeling._forward = _timed(phases, "forward", labeling._forward)
    label_writes.commit_labels = _timed(
        phases, "commit labels + progress (the last with the finish)", label_writes.commit_labels
    )
    labeling.soft_labels = _timed(phases, "soft labels (rows from logits)", labeling.soft_labels)
    waits: list[list[float]] = []
    model_batches = labeling.model_batches

    def timed_batches(loader, batch_size):
        # The wait for each model batch of a shard, in order: where the decode pipeline stalls.
        waits.append([])
        batches = model_batches(loader, batch_size)
        while True:
            begin = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            waits[-1].append(time.perf_counter() - begin)
            yield batch

    labeling.model_batches = timed_batches
    gc_started: list[float] = []
    # Collections run inside whatever code allocates, so they overlap the phases: kept apart.
    collections: dict[str, float] = defaultdict(float)

    def gc_timer(phase: str, info: dict) -> None:
        if phase == "start":
            gc_started.append(time.perf_counter())
        else:
            name = f"garbage collection, generation {info['generation']} (inside the phases above)"
            collections[name] += time.perf_counter() - gc_started.pop()

    gc.callbacks.append(gc_timer)
    # cProfile slows every Python call (the forward's module calls too): --top 0 leaves it off.
    profiler = cProfile.Profile() if args.top else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    shard_seconds = []
    for shard_id in shard_ids:
        begin = time.perf_counter()
        labeling.label_shard(shard_id, settings)
        shard_seconds.append(time.perf_counter() - begin)
    if profiler:
        profiler.disable()
    worker_s = time.perf_counter() - start
    gc.callbacks.remove(gc_timer)

    print(
        f"{args.model} {args.size}px, {args.images} images, {len(shard_ids)} shard(s) of {args.shard_size}, "
        f"batch {args.batch_size}, decode workers {args.workers}, threads {args.threads}\n"
    )
    rest = worker_s - sum(phases.values())
    parts = [*phases.items(), *collections.items(), ("rest (DataLoader start + waiting on decode)", rest)]
    print_table(
        ["phase", "seconds", "share of worker time"],
        [
            *((name, f"{seconds:.2f}", f"{seconds / worker_s:.0%}") for name, seconds in parts),
            ("**worker loop, all shards**", f"{worker_s:.2f}", f"{args.images / worker_s:.0f} img/s"),
            ("bare loop", f"{bare_s:.2f}", f"{args.images / bare_s:.0f} img/s"),
        ],
    )
    print(f"\nratio worker loop / bare: {bare_s / worker_s:.2f}\n")
    by_position = [[w[i] for w in waits if i < len(w)] for i in range(max(len(w) for w in waits))]
    means = ", ".join(f"{1000 * sum(p) / len(p):.0f}" for p in by_position)
    print(f"waiting for each model batch of a shard, ms (mean over shards): {means}")
    print("each shard, ms: " + ", ".join(f"{1000 * t:.0f}" for t in shard_seconds))
    print("first shard's batch waits, ms: " + ", ".join(f"{1000 * t:.0f}" for t in waits[0]))
    print()
    if not profiler:
        return
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(args.top)
    print(text.getvalue())


if __name__ == "__main__":
    main()
