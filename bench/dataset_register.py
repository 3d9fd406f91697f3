"""Dataset registration on a large folder: the scan against a bare directory walk, and the whole
``POST /datasets`` (scan, pixel statistics of a sample, every item inserted and committed).

    .venv/bin/python -m bench.dataset_register                      # 100,000 files, PostgreSQL
    .venv/bin/python -m bench.dataset_register --database sqlite --files 1000000

The folder holds ``--files`` Fashion-MNIST-sized PNGs in folders of ``--per-folder`` (1,000),
hard links of a few: each a file of its own to the scan, and little disk. The bare walk is
``os.walk`` collecting and sorting the paths: what any registration has to do at least. Medians
of ``--repeat`` runs. The first ``POST /datasets`` runs before anything else in the process, so
the growth of the process's peak resident memory (``ru_maxrss``) across it is the registration's
own: its bare baseline is the paths alone, a list of the walk's strings, measured after it.
``--post-only``: the POSTs alone, through HTTP only (so a checkout of any age can be measured with
this file).
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import median_time, postgres_database, print_table

LINKS_PER_FILE = 30_000  # a file system allows some tens of thousands of hard links to one file


def make_tree(root: Path, files: int, per_folder: int = 1000) -> Path:
    """``files`` copies of one 28 px PNG under ``root/pool``, ``per_folder`` a folder: a file
    written, then hard links to it, a new one every ``LINKS_PER_FILE``."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, "PNG")
    pool = root / "pool"
    for start in range(0, files, per_folder):
        folder = pool / f"{start // per_folder:05d}"
        folder.mkdir(parents=True)
        for i in range(start, min(start + per_folder, files)):
            if (i - start) % LINKS_PER_FILE == 0:
                first = folder / f"{i:07d}.png"
                first.write_bytes(buffer.getvalue())
            else:
                os.link(first, folder / f"{i:07d}.png")
    return pool


def bare_walk(folder: Path) -> list[str]:
    return sorted(os.path.join(d, name) for d, _, names in os.walk(folder) for name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--per-folder", type=int, default=1000, help="files a folder (= --files: one folder)")
    parser.add_argument("--post-only", action="store_true", help="time and measure the POSTs alone")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="nst-bench-register-")).resolve()
    os.environ["NST_DATA_DIR"] = str(root / "nst")
    os.environ["NST_DATA_ROOTS"] = str(root)
    try:
        pool = make_tree(root, args.files, args.per_folder)
        with postgres_database() if args.database == "postgresql" else nullcontext() as url:
            os.environ["NST_DATABASE_URL"] = url or f"sqlite:///{root}/bench.db"
            _run(pool, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _run(pool: Path, args) -> None:
    from fastapi.testclient import TestClient

    from service.main import create_app

    names = iter(range(args.repeat))
    with TestClient(create_app(), base_url="http://localhost") as client:  # a host NST_ALLOWED_HOSTS allows

        def register() -> dict:
            response = client.post(
                "/datasets", json={"name": f"pool-{next(names)}", "kind": "unlabeled", "path": str(pool)}
            )
            response.raise_for_status()
            return response.json()

        client.get("/datasets")  # the app and its database warmed up
        peak, grown, times = _peak_mb(), None, []
        for _ in range(args.repeat):
            start = time.perf_counter()
            body = register()
            times.append(time.perf_counter() - start)
            grown = _peak_mb() - peak if grown is None else grown  # the first POST's
        registered = statistics.median(times)
    assert body["item_count"] == args.files
    print(f"{args.database}, {args.files:,} files in folders of {args.per_folder:,}\n")
    if args.post_only:
        print(f"POST /datasets: {registered:.2f} s; peak memory grown by the first: {grown:.0f} MB")
        return
    _against_the_walk(pool, args, registered, grown)


def _against_the_walk(pool: Path, args, registered: float, grown: float) -> None:
    from nst.config import get_settings
    from service.scan import scan

    peak = _peak_mb()
    walk, walked = median_time(lambda: bare_walk(pool), args.repeat)
    held = _peak_mb() - peak
    roots = get_settings().data_roots
    scanned, result = median_time(
        lambda: sum(1 for _ in scan(str(pool), labeled=False, roots=roots, classes=None).rows), args.repeat
    )
    assert result == len(walked) == args.files, (result, len(walked))
    print_table(
        ["measurement", "seconds", "bare walk (s)", "ratio"],
        [
            ["scan", f"{scanned:.2f}", f"{walk:.2f}", f"{scanned / walk:.2f}"],
            [
                "POST /datasets (scan, pixel statistics, insert, commit)",
                f"{registered:.2f}",
                f"{walk:.2f}",
                f"{registered / walk:.2f}",
            ],
        ],
    )
    print(
        f"\npeak resident memory grown by the first POST /datasets: {grown:.0f} MB; "
        f"by the bare walk's list of paths: {held:.0f} MB"
    )


if __name__ == "__main__":
    main()
