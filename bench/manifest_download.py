"""A large manifest pulled as Parquet over HTTP, whole and by many ranks at once, against a bare
query that fetches the same rows: 1,000,000 top-10 soft labels over 1,000 classes (as
``bench.label_store`` writes them) plus 13 labeled images per class, all kept (threshold 0, no
balancing), served by a real uvicorn API on a fresh PostgreSQL database.

    .venv/bin/python -m bench.manifest_download [--labels 1000000] [--classes 1000] [--ranks 16]
        [--repeat 3] [--rank-mib-s RATE] [--whole] [--api-workers N]

Printed: the bare query (one streamed SELECT of the entries joined with their items and labels,
rows fetched and dropped) and the whole download (bytes read and dropped), alternating, medians
of ``--repeat``, and their ratio; then ``--ranks`` downloads of disjoint shares started at once,
as the ranks of one trainer would, or with ``--whole`` as many readers of the whole manifest,
each reading at ``--rank-mib-s`` at most (readers on a slow disk or link): how many arrived
whole (count and digest checked), and the slowest answer to ``GET /health`` (one ``SELECT 1``)
that a poller sent every 0.2 s meanwhile. ``--api-workers N`` serves with ``nst api --workers N``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import sqlalchemy as sa

from bench.common import bench_root, local_stack, postgres_database
from bench.label_store import populate

BARE = """
    SELECT e.item_id, i.uri, e.source, e.target_class, e.copies, e.confidence,
           l.probs, l.top_indices, l.rest_mass
    FROM manifest_entries AS e
    JOIN items AS i ON i.id = e.item_id
    LEFT JOIN labels AS l ON l.job_id = e.job_id AND l.item_id = e.item_id
    WHERE e.manifest_key = :key ORDER BY e.item_id"""


def bare_fetch(engine: sa.Engine, key: int) -> float:
    start = time.perf_counter()
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=5000).execute(sa.text(BARE), {"key": key})
        for _ in result.partitions():
            pass
    return time.perf_counter() - start


def download(url: str, manifest_id: str, part: int = 0, parts: int = 1) -> tuple[float, int]:
    params = {"format": "parquet", "part": part, "parts": parts}
    start, size = time.perf_counter(), 0
    with httpx.stream(
        "GET", f"{url}/manifests/{manifest_id}/entries", params=params, timeout=600
    ) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            size += len(chunk)
    return time.perf_counter() - start, size


class _Throttled:
    """A file that takes writes at ``mib_s`` MiB/s at most: a rank whose disk or network is slow."""

    def __init__(self, handle, mib_s: float | None):
        self.handle, self.mib_s = handle, mib_s

    def write(self, chunk: bytes) -> None:
        self.handle.write(chunk)
        if self.mib_s:
            time.sleep(len(chunk) / 2**20 / self.mib_s)


def checked_share(client, manifest_id: str, part: int, parts: int, mib_s: float | None) -> tuple[float, str]:
    """One rank's share, through the client and checked as the trainer checks it."""
    from nst import manifest_file

    start = time.perf_counter()
    try:
        with tempfile.NamedTemporaryFile() as body:
            headers = client.manifest_parquet(manifest_id, _Throttled(body, mib_s), part=part, parts=parts)
            body.flush()
            manifest_file.check_parquet(body.name, manifest_id, headers, share=f"part {part} of {parts}")
        return time.perf_counter() - start, "whole"
    except Exception as error:  # what a rank would die of
        return time.perf_counter() - start, f"{type(error).__name__}: {str(error)[:120]}"


def concurrent_shares(
    url: str, client_factory, manifest_id: str, ranks: int, mib_s: float | None, whole: bool
) -> None:
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    http.get(f"{url}/health").raise_for_status()
                    latencies.append(time.perf_counter() - start)
                except httpx.HTTPError:
                    latencies.append(float("inf"))
                stop.wait(0.2)

    def share(rank: int) -> tuple[int, int]:
        return (0, 1) if whole else (rank, ranks)

    poller = threading.Thread(target=poll)
    poller.start()
    start = time.perf_counter()
    clients = [client_factory() for _ in range(ranks)]
    with ThreadPoolExecutor(ranks) as pool:
        results = list(
            pool.map(lambda r: checked_share(clients[r], manifest_id, *share(r), mib_s), range(ranks))
        )
    wall = time.perf_counter() - start
    stop.set()
    poller.join()
    for client in clients:
        client.close()
    pace = f", each read at {mib_s} MiB/s at most" if mib_s else ""
    what = "readers of the whole manifest" if whole else "ranks, a share each,"
    arrived = sum(outcome == "whole" for _, outcome in results)
    print(f"\n{ranks} {what} at once{pace}: {arrived}/{ranks} arrived whole in {wall:.1f} s")
    for rank, (took, outcome) in enumerate(results):
        if outcome != "whole":
            print(f"  rank {rank}: {outcome} after {took:.1f} s")
    print(f"GET /health meanwhile: {len(latencies)} answers, slowest {max(latencies):.2f} s")


def _runs(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--ranks", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3, help="whole downloads (and bare queries) timed")
    parser.add_argument(
        "--rank-mib-s",
        type=float,
        default=None,
        help="the ranks' read rate, MiB/s (default: as fast as they can)",
    )
    parser.add_argument(
        "--whole", action="store_true", help="each of --ranks readers pulls the whole manifest, not a share"
    )
    parser.add_argument("--api-workers", type=int, default=1, help="API processes (nst api --workers)")
    args = parser.parse_args()

    root = bench_root(None, "nst-bench-download-")
    with postgres_database() as url:
        from nst.client import Client
        from service.core.db import make_engine
        from service.core.migrate import upgrade_head

        engine = make_engine(url)
        upgrade_head(engine)
        os.environ["NST_DATABASE_URL"] = url
        job_id, labeled_id = populate(engine, labels=args.labels, num_classes=args.classes)
        env = {"NST_DATABASE_URL": url, "NST_DATA_DIR": str(root / "nst"), "NST_DATA_ROOTS": str(root)}
        with local_stack(root, env, remove=True) as stack:
            client = stack.start_api(workers=args.api_workers)
            manifest = client.create_manifest(
                job_ids=[job_id], labeled_dataset_ids=[labeled_id], threshold=0.0, balance=False
            )
            with engine.connect() as conn:
                key = conn.scalar(sa.text("SELECT key FROM manifests WHERE id = :m"), {"m": manifest["id"]})
            bare, served, size = [], [], 0
            for _ in range(args.repeat):
                bare.append(bare_fetch(engine, key))
                took, size = download(stack.url, manifest["id"])
                served.append(took)
            print(f"{manifest['totals']['entries']:,} entries")
            if args.repeat:
                base, median = statistics.median(bare), statistics.median(served)
                print(f"Parquet body {size / 2**20:.1f} MiB")
                print(f"bare SELECT of the same rows  {base:6.2f} s   (runs: {_runs(bare)})")
                print(f"Parquet download, whole       {median:6.2f} s   (runs: {_runs(served)})")
                print(f"ratio {median / base:.2f}")
            factory = lambda: Client(stack.url, timeout=600)  # noqa: E731
            concurrent_shares(stack.url, factory, manifest["id"], args.ranks, args.rank_mib_s, args.whole)
        engine.dispose()


if __name__ == "__main__":
    main()
