"""Peak memory of the API and of a worker over a labeling job of real Fashion-MNIST PNGs (20,000
by default), through the real stack (cli/localstack.py: uvicorn API, one Celery worker).

    .venv/bin/python -m bench.job_memory [--images 20000] [--model resnet18] [--batch-size 64]
        [--shard-size 1000] [--decode-workers 2] [--interval 0.1]
        [--database-url postgresql+psycopg://...] [--broker-url redis://...]

Each process tree (the API; the worker's main process with its pool and decode processes) is
sampled every --interval seconds from /proc: the sum of its processes' RSS (which counts pages
shared between forked processes once per process) and of their PSS (which splits shared pages
among their sharers, so a tree's PSS adds up to what it really holds). Baseline, measured in the
same run: the same trees idle, with the teacher already loaded by its validation, just before the
job is submitted. The API is polled for the job every 0.5 s meanwhile, as nst's own client does.
Default: SQLite and the embedded broker under a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bench.common import bench_root, local_stack, print_table
from bench.label_throughput import make_teacher, write_images

MIB = 1024 * 1024


def _ppids() -> dict[int, int]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(FileNotFoundError, ProcessLookupError):  # ended while we looked
                found[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return found


def tree(root: int, ppids: dict[int, int]) -> list[int]:
    pids, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in ppids.items() if parent in frontier]
        pids += frontier
    return pids


def _field_kib(path: Path, name: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(name):
            return int(line.split()[1])
    return 0


def rss_pss(pid: int) -> tuple[int, int]:
    """Bytes resident (RSS) and proportional set size (PSS) of one process."""
    proc = Path(f"/proc/{pid}")
    return _field_kib(proc / "status", "VmRSS:") * 1024, _field_kib(proc / "smaps_rollup", "Pss:") * 1024


@dataclass
class Peaks:
    rss: int = 0
    pss: int = 0
    processes: int = 0
    largest_process_rss: int = 0
    samples: int = 0


@dataclass
class Sampler:
    roots: dict[str, int]
    interval: float
    peaks: dict[str, Peaks] = field(default_factory=dict)
    cpu_s: float = 0.0  # this sampler's own CPU time
    _stop: threading.Event = field(default_factory=threading.Event)
    _trees: dict[str, list[int]] = field(default_factory=dict)
    _scanned: float = float("-inf")

    def sample(self) -> None:
        # The trees change rarely (decode processes start with a teacher): rescan /proc each second.
        now = time.monotonic()
        if now - self._scanned >= 1.0:
            ppids = _ppids()
            self._trees = {name: tree(root, ppids) for name, root in self.roots.items()}
            self._scanned = now
        for name, pids in self._trees.items():
            sizes = []
            for pid in pids:
                # a decode process may end between the scan and the read
                with suppress(FileNotFoundError, ProcessLookupError):
                    sizes.append(rss_pss(pid))
            peak = self.peaks.setdefault(name, Peaks())
            peak.rss = max(peak.rss, sum(r for r, _ in sizes))
            peak.pss = max(peak.pss, sum(p for _, p in sizes))
            peak.processes = max(peak.processes, len(sizes))
            peak.largest_process_rss = max(peak.largest_process_rss, max((r for r, _ in sizes), default=0))
            peak.samples += 1

    def run(self) -> None:
        start = time.thread_time()
        while not self._stop.wait(self.interval):
            self.sample()
        self.cpu_s = time.thread_time() - start

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle baseline")
    parser.add_argument("--database-url", default="", help="default: SQLite in the bench folder")
    parser.add_argument("--broker-url", default="", help="default: SQLAlchemy broker on SQLite")
    parser.add_argument("--dir", type=Path, default=None, help="bench folder (default: a temp one)")
    args = parser.parse_args()

    root = bench_root(args.dir, "nst-bench-")
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    env = {
        "NST_DATA_DIR": str(root / "nst"),
        "NST_DATA_ROOTS": str(data),
        "NST_WORKER_DEVICE": "cpu",
    }
    if args.database_url:
        env["NST_DATABASE_URL"] = args.database_url
    if args.broker_url:
        env["NST_BROKER_URL"] = args.broker_url

    with local_stack(root, env, remove=args.dir is None) as stack:
        client = stack.start_api()
        worker = stack.start_worker(concurrency=1, NST_DECODE_WORKERS=str(args.decode_workers))
        folder = write_images(data, args.images)
        dataset = client.register_dataset(name=f"bench-{args.images}", kind="unlabeled", path=folder)
        path, _ = make_teacher(data, args.model, 28, 0)
        teacher = client.upload_teacher(path)
        client.wait_for_teacher(teacher["id"])
        roots = {"API": stack.api_process.pid, "worker": worker.pid}

        with Sampler(roots, args.interval) as idle:
            time.sleep(args.idle)
        with Sampler(roots, args.interval) as busy:
            job = client.create_job(
                teacher_id=teacher["id"],
                dataset_id=dataset["id"],
                batch_size=args.batch_size,
                shard_size=args.shard_size,
            )
            while (job := client.job(job["id"]))["state"] not in ("succeeded", "failed", "cancelled"):
                time.sleep(0.5)
        if job["state"] != "succeeded" or job["items_done"] != args.images:
            raise RuntimeError(f"job {job['id']} is {job['state']} with {job['items_done']} labels: {job}")

    seconds = (
        datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
    ).total_seconds()
    print(
        f"\n{args.images:,} images, {args.model} at 28 px, batch {args.batch_size}, shard {args.shard_size}, "
        f"decode workers {args.decode_workers}, broker {args.broker_url or 'sqla+sqlite'}, "
        f"database {args.database_url or 'sqlite'}, cpu count {os.cpu_count()}; "
        f"labeled in {seconds:.1f} s; sampled every {args.interval} s "
        f"({busy.peaks['API'].samples} samples during the job, {busy.cpu_s:.1f} s of the sampler's own CPU)\n"
    )
    print_table(
        [
            "process tree",
            "processes",
            "idle RSS MiB (baseline)",
            "peak RSS MiB",
            "ratio",
            "idle PSS MiB",
            "peak PSS MiB",
            "largest process RSS MiB",
        ],
        (
            (
                name,
                busy.peaks[name].processes,
                f"{idle.peaks[name].rss / MIB:.0f}",
                f"{busy.peaks[name].rss / MIB:.0f}",
                f"{busy.peaks[name].rss / idle.peaks[name].rss:.2f}",
                f"{idle.peaks[name].pss / MIB:.0f}",
                f"{busy.peaks[name].pss / MIB:.0f}",
                f"{busy.peaks[name].largest_process_rss / MIB:.0f}",
            )
            for name in roots
        ),
    )


if __name__ == "__main__":
    main()
