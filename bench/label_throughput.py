"""Labeling throughput: images per second from job submission to the last label committed,
through the real stack (uvicorn API, Celery broker, one real Celery worker process), in each
inference mode (workers/inference.py), against a bare eager float32 PyTorch loop over the same
image files, measured in the same run.

    .venv/bin/python -m bench.label_throughput [--images 3000] [--images-224 600]
        [--modes eager,bf16,openvino] [--models resnet18,efficientnet_b0] [--sizes 28,224] [--batch-size 64]
        [--shard-size 1000] [--workers 2] [--threads 2] [--repeats 3] [--poll 0.5] [--reuse-teacher]
        [--database-url postgresql+psycopg://...] [--broker-url redis://...]

The bare loop: a torch DataLoader (same num_workers as the worker's NST_DECODE_WORKERS) over the
same PNG files, PIL decode + timm's eval transform (timm.data.create_transform with the teacher
metadata's settings), the same model built with timm from the same safetensors file, the same
batch size and torch threads; its clock runs from building the model to the last batch's logits,
while the stack's processes are stopped (SIGSTOP), so their idle polling does not slow it.
The service's time runs from submission to the last label committed, by the job's own
timestamps (created_at to finished_at); the client's clock (create_job call until a poll reads
succeeded, polled every --poll seconds) is shown beside it.
Each job's teacher is fresh, so the worker loads the model inside the timed window, as the bare
loop does (``--reuse-teacher``: one teacher for every run, the worker warm from the run before).
Targets: service / bare >= 0.95 in eager; >= 1.5 in the best mode that passes the fidelity gate
(bench/label_fidelity.py). Default broker: kombu's SQLAlchemy transport on SQLite, database
SQLite, both under a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import datetime
from pathlib import Path

import timm
import torch
from PIL import Image
from safetensors.torch import load_file
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset

from bench.common import bench_root, local_stack, print_table
from cli import fashion_mnist
from nst.checkpoint import default_metadata, save_teacher


class Files(Dataset):
    def __init__(self, paths: list[str], transform, mode: str):
        self.paths, self.transform, self.mode = paths, transform, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert(self.mode))


def write_images(root: Path, count: int) -> Path:
    out = root / f"unlabeled-{count}"
    if not out.exists():
        images, labels = fashion_mnist.load("train")
        fashion_mnist.write_unlabeled(out, images, labels, range(count))
    return out


def make_teacher(root: Path, architecture: str, size: int, variant: int) -> tuple[Path, dict]:
    """A random-init teacher; each variant has other weights, so it is a new teacher to the
    worker, which must load it inside the timed window as the bare loop does."""
    metadata = default_metadata(
        architecture, fashion_mnist.CLASSES, channels=1, image_size=size, crop_pct=1.0
    )
    metadata["name"] = f"bench-{architecture}-{size}-{variant}"
    torch.manual_seed(variant)
    model = timm.create_model(architecture, pretrained=False, num_classes=10, in_chans=1)
    path = save_teacher(model.state_dict(), root / f"{architecture}-{size}-{variant}.safetensors", metadata)
    return path, metadata


def bare(path: Path, metadata: dict, files: list[str], batch_size: int, workers: int) -> float:
    """Seconds for load model + decode + forward over every file."""
    start = time.perf_counter()
    model = timm.create_model(metadata["architecture"], pretrained=False, num_classes=10, in_chans=1)
    model.load_state_dict(load_file(str(path)))
    model.eval()
    transform = create_transform(
        input_size=(1, metadata["image_size"], metadata["image_size"]),
        is_training=False,
        interpolation=metadata["interpolation"],
        mean=tuple(metadata["mean"]),
        std=tuple(metadata["std"]),
        crop_pct=metadata["crop_pct"],
    )
    loader = DataLoader(Files(files, transform, "L"), batch_size=batch_size, num_workers=workers)
    seen = 0
    with torch.inference_mode():
        for images in loader:
            seen += len(model(images))
    assert seen == len(files)
    return time.perf_counter() - start


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name, from the state on (Linux)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int:
    """Page faults served without disk so far: copy-on-write copies after a fork among them."""
    return int(_stat(pid)[7])


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                pass  # ended while we looked
    return found


def service(client, teacher_id: str, dataset_id: int, args, mode: str) -> tuple[float, float, dict]:
    """Seconds from submission to the last label committed, by the job's own timestamps
    (created_at, set when the API commits the job, to finished_at, the last shard's commit),
    and by this process's clock, which adds up to one polling interval."""
    start = time.perf_counter()
    job = client.create_job(
        teacher_id=teacher_id,
        dataset_id=dataset_id,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        inference=mode,
    )
    while (job := client.job(job["id"]))["state"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(args.poll)
    wall = time.perf_counter() - start
    if job["state"] != "succeeded":
        raise RuntimeError(f"job {job['id']} is {job['state']}: {job}")
    server = (
        datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["created_at"])
    ).total_seconds()
    return server, wall, job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="images at 28 px")
    parser.add_argument("--images-224", type=int, default=600, help="images at 224 px")
    parser.add_argument(
        "--modes", default="eager,bf16,openvino", help="inference modes of the service's jobs, each run"
    )
    parser.add_argument("--models", default="resnet18,efficientnet_b0")
    parser.add_argument("--sizes", default="28,224")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="decode workers, both sides")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    parser.add_argument(
        "--poll",
        type=float,
        default=0.5,
        help="seconds between job polls; 0.5 is what nst's own client waits between them "
        "(each poll costs the API CPU on the same cores: at 0.25 s, about 2%% of a 28 px job)",
    )
    parser.add_argument(
        "--reuse-teacher",
        action="store_true",
        help="every run labels with the first run's teacher, so the worker already holds the model "
        "and its decode processes, as for a long job's later shards (the bare loop still builds "
        "its model and starts its decoders inside its clock: this favours the service by that much)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="bare and service runs, alternating; medians reported"
    )
    parser.add_argument("--database-url", default="", help="default: SQLite in the bench folder")
    parser.add_argument("--broker-url", default="", help="default: SQLAlchemy broker on SQLite")
    parser.add_argument("--dir", type=Path, default=None, help="bench folder (default: a temp one)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    root = bench_root(args.dir, "nst-bench-")
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    env = {
        "NST_DATA_DIR": str(root / "nst"),
        "NST_DATA_ROOTS": str(data),
        "NST_WORKER_DEVICE": "cpu",
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
    }
    if args.database_url:
        env["NST_DATABASE_URL"] = args.database_url
    if args.broker_url:
        env["NST_BROKER_URL"] = args.broker_url
    sizes = [int(s) for s in args.sizes.split(",")]
    models = args.models.split(",")
    modes = args.modes.split(",")
    counts = {size: args.images if size < 100 else args.images_224 for size in sizes}

    rows = []
    with local_stack(root, env, remove=args.dir is None) as stack:
        client = stack.start_api()
        worker = stack.start_worker(concurrency=1, NST_DECODE_WORKERS=str(args.workers))
        folders = {n: write_images(data, n) for n in sorted(set(counts.values()))}
        datasets = {
            n: client.register_dataset(name=f"bench-{n}", kind="unlabeled", path=folder)["id"]
            for n, folder in folders.items()
        }
        for architecture in models:
            for size in sizes:
                n = counts[size]
                files = sorted(str(p) for p in folders[n].glob("*.png"))
                bare_runs: list[float] = []
                service_runs: dict[str, list[float]] = {m: [] for m in modes}
                wall_runs: dict[str, list[float]] = {m: [] for m in modes}
                ran: dict[str, set[str]] = {m: set() for m in modes}
                # Bare and service alternate, so a slow spell of a shared machine hits both.
                teacher = None
                for repeat in range(args.repeats):
                    # The stack waits stopped meanwhile: its idle processes (the embedded broker
                    # polls every 50 ms) would otherwise tax the bare loop, not the service.
                    with stack.paused():
                        if teacher is None:
                            path, metadata = make_teacher(data, architecture, size, 0)
                        bare(path, metadata, files[: 2 * args.batch_size], args.batch_size, 0)  # warm-up
                        bare_runs.append(bare(path, metadata, files, args.batch_size, args.workers))
                    for mode in modes:
                        if teacher is None or not args.reuse_teacher:
                            variant = 1 + repeat * len(modes) + modes.index(mode)
                            path, metadata = make_teacher(data, architecture, size, variant)
                            teacher = client.upload_teacher(path)
                            client.wait_for_teacher(teacher["id"])
                        # What the stack itself burns meanwhile, beside the labeling pool process:
                        # the API answering polls, the worker's main process fetching messages.
                        stack_pids = {"API": stack.api_process.pid, "worker main": worker.pid}
                        before = {k: cpu_seconds(p) for k, p in stack_pids.items()}
                        (pool_pid,) = children(worker.pid)  # concurrency 1: one pool process
                        faults = minor_faults(pool_pid)
                        service_s, wall_s, job = service(client, teacher["id"], datasets[n], args, mode)
                        spent = ", ".join(
                            f"{k} {cpu_seconds(p) - before[k]:.2f} s" for k, p in stack_pids.items()
                        )
                        service_runs[mode].append(service_s)
                        wall_runs[mode].append(wall_s)
                        ran[mode].update(job["inference_used"])
                        print(
                            f"{architecture} {size}px {mode} run {repeat + 1}/{args.repeats}: "
                            f"bare {bare_runs[-1]:.2f} s, service {service_s:.2f} s "
                            f"(ran {','.join(job['inference_used'])}), client clock {wall_s:.2f} s "
                            f"(CPU meanwhile: {spent}; labeling process page faults "
                            f"{minor_faults(pool_pid) - faults:,})",
                            flush=True,
                        )
                bare_s = statistics.median(bare_runs)
                for mode in modes:
                    service_s, wall_s = (statistics.median(r) for r in (service_runs[mode], wall_runs[mode]))
                    bare_rate, service_rate = n / bare_s, n / service_s
                    # Each run's own ratio too: a bare run and the service runs right after it
                    # share the machine's mood of the moment, which varies by +-10% on a shared host.
                    pairs = [b / s for b, s in zip(bare_runs, service_runs[mode], strict=True)]
                    ratios = (service_rate / bare_rate, statistics.median(pairs), min(pairs), max(pairs))
                    label = mode if ran[mode] == {mode} else f"{mode} (ran {','.join(sorted(ran[mode]))})"
                    rows.append((architecture, size, n, label, bare_rate, service_rate, n / wall_s, *ratios))

    teachers = "one teacher for every run" if args.reuse_teacher else "a new teacher each run"
    print(
        f"\nbroker: {args.broker_url or 'sqla+sqlite'}, database: {args.database_url or 'sqlite'}, "
        f"batch {args.batch_size}, shard {args.shard_size}, decode workers {args.workers}, "
        f"threads {args.threads}, cpu count {os.cpu_count()}, medians of {args.repeats} runs, "
        f"poll {args.poll} s, {teachers}\n"
    )
    print_table(
        [
            "model",
            "size",
            "images",
            "inference",
            "bare eager img/s",
            "service img/s (submitted to last commit)",
            "service img/s, client clock",
            "ratio of medians",
            "per-run ratios: median (min-max)",
        ],
        (
            (
                architecture,
                f"{size} px",
                n,
                mode,
                f"{b:.1f}",
                f"{s:.1f}",
                f"{t:.1f}",
                f"{ratio:.2f}",
                f"{pair:.2f} ({low:.2f}-{high:.2f})",
            )
            for architecture, size, n, mode, b, s, t, ratio, pair, low, high in rows
        ),
        target="ratio >= 0.95 (eager); >= 1.5 in the best mode that passes the fidelity gate",
    )


if __name__ == "__main__":
    main()
