"""Labeling throughput: images per second from job submission to the last label committed,
through the real stack (uvicorn API, Celery broker, one real Celery worker process), in each
inference mode (workers/inference.py), against a bare eager float32 PyTorch loop over the same
image files, measured in the same run.

    .venv/bin/python -m bench.label_throughput [--images 3000] [--images-224 600]
        [--modes eager,bf16,openvino] [--models resnet18,efficientnet_b0] [--sizes 28,224] [--batch-size 64]
        [--shard-size 1000] [--workers 2] [--bare-workers 0,2] [--threads 2] [--repeats 3] [--poll 0.5]
        [--reuse-teacher]
        [--database-url postgresql+psycopg://...] [--broker-url redis://...]

The bare loop: a torch DataLoader over the same PNG files, PIL decode + timm's eval transform
(timm.data.create_transform with the teacher metadata's settings), the same model built with
timm from the same safetensors file, the same batch size and torch threads; its clock runs from
building the model to the last batch's logits, while the stack's processes are stopped
(SIGSTOP), so their idle polling does not slow it. It is timed with 0 DataLoader processes
(decoding in the loop's own process) and with the worker's NST_DECODE_WORKERS, and the faster of
the two each run is the baseline (``--bare-workers`` names others).
The service's time runs from submission to the last label committed, by the job's own
timestamps (created_at to finished_at); the client's clock (create_job call until a poll reads
succeeded, polled every --poll seconds) is shown beside it.
Each job's teacher is fresh, so the worker loads the model inside the timed window, as the bare
loop does (``--reuse-teacher``: one teacher for every run, the worker warm from the run before).
Targets: service / bare >= 0.95 in eager; >= 1.5 in the best mode that passes the fidelity gate
(bench/label_fidelity.py). Default broker: kombu's SQLAlchemy transport on SQLite, database
SQLite, both under a temporary folder.

``--device cuda``: the worker labels on the GPU (``NST_WORKER_DEVICE=cuda``, default modes
eager, bf16, compile) and each mode's baseline is the model alone: the same teacher prepared
as the worker prepares it (``workers.inference.prepare``, same mode, so the same precision)
forwarding the same images, decoded beforehand and already on the GPU, in batches of the same
size, each batch's logits brought back to the host as the worker's are. GPU utilisation is
sampled by ``nvidia-smi`` every 100 ms while each service run labels. Target: service /
model-only >= 0.9.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from contextlib import nullcontext
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
from workers.inference import prepare


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
    model = _model(path, metadata)
    loader = DataLoader(
        Files(files, _eval_transform(metadata), "L"), batch_size=batch_size, num_workers=workers
    )
    seen = 0
    with torch.inference_mode():
        for images in loader:
            seen += len(model(images))
    assert seen == len(files)
    return time.perf_counter() - start


def _model(path: Path, metadata: dict) -> torch.nn.Module:
    """The teacher in ``path``, built with timm, in eval mode on the CPU."""
    model = timm.create_model(metadata["architecture"], pretrained=False, num_classes=10, in_chans=1)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def _eval_transform(metadata: dict):
    return create_transform(
        input_size=(1, metadata["image_size"], metadata["image_size"]),
        is_training=False,
        interpolation=metadata["interpolation"],
        mean=tuple(metadata["mean"]),
        std=tuple(metadata["std"]),
        crop_pct=metadata["crop_pct"],
    )


def decoded(metadata: dict, files: list[str]) -> torch.Tensor:
    """Every file's image through the teacher's eval transform, as one CPU tensor."""
    images = Files(files, _eval_transform(metadata), "L")
    return torch.stack([images[i] for i in range(len(images))])


def model_only(path: Path, metadata: dict, images: torch.Tensor, batch_size: int, mode: str, device: str):
    """Seconds for the forward alone over ``images`` (decoded beforehand, moved to ``device``
    before the clock starts), the model prepared in ``mode`` as the worker prepares it; and the
    mode that ran."""
    model = _model(path, metadata).to(device)
    images = images.to(device)
    runner = prepare(model, tuple(images.shape[1:]), device, mode, batch_size)  # warms up too
    runner(images[:batch_size])
    start = time.perf_counter()
    seen = sum(len(runner(part)) for part in images.split(batch_size))  # each batch's logits on the host
    assert seen == len(images)
    return time.perf_counter() - start, runner.mode


class GpuUtilisation:
    """nvidia-smi's utilisation of GPU ``index`` every 100 ms while the block runs: ``mean`` and
    ``peak`` in percent afterwards (None without nvidia-smi)."""

    def __init__(self, index: int = 0) -> None:
        self.index, self.mean, self.peak = index, None, None

    def __enter__(self):
        query = ["--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
        try:
            self._process = subprocess.Popen(
                ["nvidia-smi", "-i", str(self.index), *query], stdout=subprocess.PIPE, text=True
            )
        except FileNotFoundError:
            self._process = None
        return self

    def __exit__(self, *exc) -> None:
        if self._process is None:
            return
        self._process.terminate()
        out, _ = self._process.communicate(timeout=10)
        samples = [int(line) for line in out.split() if line.strip().isdigit()]
        if samples:
            self.mean, self.peak = statistics.fmean(samples), max(samples)


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
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where the worker labels; cuda: each mode against the model alone on the GPU",
    )
    parser.add_argument(
        "--baseline",
        choices=["bare", "model-alone"],
        default=None,
        help="bare: the eager float32 loop that decodes the files too; model-alone: the forward alone, "
        "in each mode, on images decoded beforehand (default: bare on the CPU, model-alone on a GPU)",
    )
    parser.add_argument(
        "--modes",
        default=None,
        help="inference modes of the service's jobs, each run (default: eager,bf16,openvino on the "
        "CPU; eager,bf16,compile on a GPU)",
    )
    parser.add_argument("--models", default="resnet18,efficientnet_b0")
    parser.add_argument("--sizes", default="28,224")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="the worker's decode processes")
    parser.add_argument(
        "--bare-workers",
        default=None,
        help="DataLoader processes of the bare loop, comma-separated: each is timed and the faster "
        "is the baseline (default: 0 and --workers; on a 2-core host decoding in the loop's own "
        "process can be the faster)",
    )
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
        "--repeats", type=int, default=3, help="baseline and service runs, alternating; medians reported"
    )
    parser.add_argument("--database-url", default="", help="default: SQLite in the bench folder")
    parser.add_argument("--broker-url", default="", help="default: SQLAlchemy broker on SQLite")
    parser.add_argument("--dir", type=Path, default=None, help="bench folder (default: a temp one)")
    args = parser.parse_args()

    gpu = args.device == "cuda"
    alone = (args.baseline or ("model-alone" if gpu else "bare")) == "model-alone"
    torch.set_num_threads(args.threads)
    root = bench_root(args.dir, "nst-bench-")
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    env = {
        "NST_DATA_DIR": str(root / "nst"),
        "NST_DATA_ROOTS": str(data),
        "NST_WORKER_DEVICE": args.device,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
    }
    if args.database_url:
        env["NST_DATABASE_URL"] = args.database_url
    if args.broker_url:
        env["NST_BROKER_URL"] = args.broker_url
    bare_counts = sorted({int(c) for c in (args.bare_workers or f"0,{args.workers}").split(",")})
    sizes = [int(s) for s in args.sizes.split(",")]
    models = args.models.split(",")
    modes = (args.modes or ("eager,bf16,compile" if gpu else "eager,bf16,openvino")).split(",")
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
                # Each mode's baseline: the bare eager loop (one for every mode), or the model
                # alone in that mode.
                baseline_runs: dict[str, list[float]] = {m: [] for m in modes}
                bare_runs: dict[int, list[float]] = {count: [] for count in bare_counts}
                service_runs: dict[str, list[float]] = {m: [] for m in modes}
                wall_runs: dict[str, list[float]] = {m: [] for m in modes}
                ran: dict[str, set[str]] = {m: set() for m in modes}
                use: dict[str, list[GpuUtilisation]] = {m: [] for m in modes}
                # Baseline and service alternate, so a slow spell of a shared machine hits both.
                teacher, pixels = None, None
                for repeat in range(args.repeats):
                    # The stack waits stopped meanwhile: its idle processes (the embedded broker
                    # polls every 50 ms) would otherwise tax the baseline, not the service.
                    with stack.paused():
                        if teacher is None:
                            path, metadata = make_teacher(data, architecture, size, 0)
                        if not alone:
                            bare(path, metadata, files[: 2 * args.batch_size], args.batch_size, 0)  # warm-up
                            for count in bare_counts:
                                bare_runs[count].append(bare(path, metadata, files, args.batch_size, count))
                            seconds = min(runs[-1] for runs in bare_runs.values())
                            for mode in modes:
                                baseline_runs[mode].append(seconds)
                    for mode in modes:
                        if teacher is None or not args.reuse_teacher:
                            variant = 1 + repeat * len(modes) + modes.index(mode)
                            path, metadata = make_teacher(data, architecture, size, variant)
                            teacher = client.upload_teacher(path)
                            client.wait_for_teacher(teacher["id"])
                        if alone:
                            with stack.paused():
                                if pixels is None:  # the same for every teacher of this size
                                    pixels = decoded(metadata, files)
                                seconds, alone_ran = model_only(
                                    path, metadata, pixels, args.batch_size, mode, args.device
                                )
                            baseline_runs[mode].append(seconds)
                            ran[mode].add(f"model alone: {alone_ran}")
                        # What the stack itself burns meanwhile, beside the labeling pool process:
                        # the API answering polls, the worker's main process fetching messages.
                        stack_pids = {"API": stack.api_process.pid, "worker main": worker.pid}
                        before = {k: cpu_seconds(p) for k, p in stack_pids.items()}
                        (pool_pid,) = children(worker.pid)  # concurrency 1: one pool process
                        faults = minor_faults(pool_pid)
                        with GpuUtilisation() if gpu else nullcontext() as sampled:
                            service_s, wall_s, job = service(client, teacher["id"], datasets[n], args, mode)
                        spent = ", ".join(
                            f"{k} {cpu_seconds(p) - before[k]:.2f} s" for k, p in stack_pids.items()
                        )
                        service_runs[mode].append(service_s)
                        wall_runs[mode].append(wall_s)
                        ran[mode].update(job["inference_used"])
                        if gpu:
                            use[mode].append(sampled)
                        busy = f", GPU {_utilisation([sampled])}" if gpu else ""
                        bare_times = ", ".join(
                            f"{c} DataLoader processes {r[-1]:.2f} s" for c, r in bare_runs.items() if r
                        )
                        print(
                            f"{architecture} {size}px {mode} run {repeat + 1}/{args.repeats}: "
                            f"{'model alone' if alone else 'bare'} "
                            f"{baseline_runs[mode][-1]:.2f} s{f' ({bare_times})' if bare_times else ''}, "
                            f"service {service_s:.2f} s (ran {','.join(job['inference_used'])}){busy}, "
                            f"client clock {wall_s:.2f} s (CPU meanwhile: {spent}; labeling process "
                            f"page faults {minor_faults(pool_pid) - faults:,})",
                            flush=True,
                        )
                if not alone:
                    medians = (f"{c}: {statistics.median(r):.2f} s" for c, r in bare_runs.items())
                    print(f"{architecture} {size}px bare loop, by DataLoader processes: {', '.join(medians)}")
                for mode in modes:
                    baseline_s, service_s, wall_s = (
                        statistics.median(r)
                        for r in (baseline_runs[mode], service_runs[mode], wall_runs[mode])
                    )
                    baseline_rate, service_rate = n / baseline_s, n / service_s
                    # Each run's own ratio too: a baseline run and the service run right after it
                    # share the machine's mood of the moment, which varies by +-10% on a shared host.
                    pairs = [b / s for b, s in zip(baseline_runs[mode], service_runs[mode], strict=True)]
                    ratios = (service_rate / baseline_rate, statistics.median(pairs), min(pairs), max(pairs))
                    expected = {mode} | ({f"model alone: {mode}"} if alone else set())
                    label = mode if ran[mode] == expected else f"{mode} (ran {', '.join(sorted(ran[mode]))})"
                    row = (architecture, size, n, label, baseline_rate, service_rate, n / wall_s, *ratios)
                    rows.append((*row, _utilisation(use[mode])) if gpu else row)

    teachers = "one teacher for every run" if args.reuse_teacher else "a new teacher each run"
    gpu_name = f", {torch.cuda.get_device_name(0)}" if gpu else ""
    print(
        f"\nbroker: {args.broker_url or 'sqla+sqlite'}, database: {args.database_url or 'sqlite'}, "
        f"batch {args.batch_size}, shard {args.shard_size}, decode workers {args.workers}, "
        f"threads {args.threads}, cpu count {os.cpu_count()}{gpu_name}, medians of {args.repeats} "
        f"runs, poll {args.poll} s, {teachers}\n"
    )
    baseline = f"model alone ({args.device}, same mode) img/s" if alone else "bare eager img/s"
    headers = ["model", "size", "images", "inference", baseline]
    headers += ["service img/s (submitted to last commit)", "service img/s, client clock"]
    headers += ["ratio of medians", "per-run ratios: median (min-max)"]
    print_table(
        headers + (["GPU utilisation while labeling: mean (peak)"] if gpu else []),
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
                *rest,
            )
            for architecture, size, n, mode, b, s, t, ratio, pair, low, high, *rest in rows
        ),
        target="ratio >= 0.9 on a GPU (the model alone, same mode and batch)"
        if alone
        else "ratio >= 0.95 (eager); >= 1.5 in the best mode that passes the fidelity gate",
    )


def _utilisation(samples: list[GpuUtilisation]) -> str:
    """Runs' mean utilisations, their median and the highest sample of any run."""
    means = [s.mean for s in samples if s.mean is not None]
    if not means:
        return "no nvidia-smi"
    return f"{statistics.median(means):.0f}% ({max(s.peak for s in samples if s.peak is not None)}%)"


if __name__ == "__main__":
    main()
