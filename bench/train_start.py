"""Time from ``nst train`` start to its first optimizer step, and each rank's peak RSS, on a
large synthetic manifest in PostgreSQL: 1,000,000 top-10 soft labels over 1,000 classes (as
``bench.label_store`` writes them) plus 13 labeled images per class, all kept (threshold 0, no
balancing), served by a real uvicorn API.

    .venv/bin/python -m bench.train_start [--labels 1000000] [--classes 1000] [--ranks 1]
        [--src PATH] [--timeout 900]

The trainer runs as ``python -m trainer`` (what ``nst train`` runs), under ``torchrun`` when
``--ranks`` > 1, with ``--steps 1``: its wall time is start to the end of the first step plus the
final checkpoint. ``--src`` runs another checkout's trainer (e.g. a ``git worktree`` of an older
commit) against this API. Peak RSS is each rank process's VmHWM (DataLoader workers apart).
Every item's URI points at one of 64 small PNG files: only the first batches are decoded.
Target: <= 60 s and <= 2 GB per rank. Uses a fresh database on NST_TEST_PG_ADMIN_URL's server.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from PIL import Image

from bench.common import bench_root, local_stack, postgres_database
from bench.label_store import populate


def _point_uris_at_images(engine: sa.Engine, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(64):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE items SET uri = :f || '/' || (id % 64) || '.png'"), {"f": str(folder)})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE items"))


def _peak_rss(pid: int) -> int | None:
    """VmHWM in bytes, or None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def _ranks(root: int, ranks: int) -> list[int]:
    """The rank processes: the trainer itself, or torchrun's children that run it."""
    if ranks == 1:
        return [root]
    return [pid for pid in _children(root) if b"trainer" in _cmdline(pid)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def run_trainer(args, manifest_id: str, api_url: str, out: Path) -> tuple[float, dict[int, int], int]:
    options = [
        "--manifest", manifest_id, "--api", api_url, "--steps", "1", "--batch-size", "16",
        "--workers", "2", "--no-register", "--no-progress", "--checkpoint-every", "0",
        "--out-dir", str(out),
    ]  # fmt: skip
    if args.ranks == 1:
        command = [sys.executable, "-m", "trainer", *options]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.ranks}"]
        command += ["-m", "trainer", *options]
    env = {**os.environ, "PYTHONPATH": str(args.src), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=args.src, env=env)
    peaks: dict[int, int] = {}
    while process.poll() is None:
        for pid in _ranks(process.pid, args.ranks):
            if (rss := _peak_rss(pid)) is not None:
                peaks[pid] = max(peaks.get(pid, 0), rss)
        time.sleep(0.1)
        if time.perf_counter() - start > args.timeout:
            process.kill()
            process.wait()
            break
    return time.perf_counter() - start, peaks, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--src", type=Path, default=Path.cwd(), help="checkout whose trainer runs")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before the trainer is killed")
    parser.add_argument("--dir", type=Path, default=None, help="bench folder (default: a temp one)")
    args = parser.parse_args()
    args.src = args.src.resolve()

    root = bench_root(args.dir, "nst-bench-start-")
    with postgres_database() as url:
        from service.core.db import make_engine
        from service.core.migrate import upgrade_head

        engine = make_engine(url)
        upgrade_head(engine)
        os.environ["NST_DATABASE_URL"] = url
        start = time.perf_counter()
        job_id, labeled_id = populate(engine, labels=args.labels, num_classes=args.classes)
        _point_uris_at_images(engine, root / "images")
        took = time.perf_counter() - start
        print(f"{args.labels:,} labels in {args.classes:,} classes written in {took:.0f} s")
        env = {"NST_DATABASE_URL": url, "NST_DATA_DIR": str(root / "nst"), "NST_DATA_ROOTS": str(root)}
        with local_stack(root, env, remove=args.dir is None) as stack:
            client = stack.start_api()
            start = time.perf_counter()
            manifest = client.create_manifest(
                job_ids=[job_id], labeled_dataset_ids=[labeled_id], threshold=0.0, balance=False
            )
            took = time.perf_counter() - start
            print(f"manifest of {manifest['totals']['entries']:,} entries built in {took:.0f} s")
            seconds, peaks, code = run_trainer(args, manifest["id"], stack.url, root / "run")
        engine.dispose()
    status = "ok" if code == 0 else f"exit code {code}"
    rss = ", ".join(f"{peak / 2**30:.2f} GiB" for peak in peaks.values())
    print(f"\ntrainer from {args.src} on {args.ranks} rank(s): {status}")
    print(f"start to first step (steps=1, exit included): {seconds:.1f} s   target <= 60 s")
    print(f"peak RSS per rank: {rss}   target <= 2 GiB")


if __name__ == "__main__":
    main()
