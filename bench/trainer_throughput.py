"""Training throughput: images per second of ``trainer.train`` (manifest pulled over HTTP from a
real uvicorn API) against a bare timm training loop, measured in the same run.

    .venv/bin/python -m bench.trainer_throughput [--steps 60] [--models resnet18,efficientnet_b0]
        [--image-size 28] [--batch-size 64] [--workers 2] [--threads 2] [--per-class 100]

The manifest is labeled-only (a Fashion-MNIST ImageFolder train split, ``--per-class`` images per
class), so each step is ``--batch-size`` images. The bare loop uses the same timm model (same
dropout and drop path), the same transform (``trainer.data.train_transform``, RandAugment on),
a DataLoader with the same workers over the same files, cross-entropy with the same label
smoothing, the same optimizer (``timm.optim.create_optimizer_v2``) and the same EMA. Both clocks
run the same way as the trainer's own ``images_per_s``: from the first batch request (the
DataLoader workers' start included) to the end of the last step; model build, manifest fetch and
the final checkpoint are outside both. Target: trainer / bare >= 0.95.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, Dataset, RandomSampler

from bench.common import bench_root, local_stack, print_table
from cli import fashion_mnist
from trainer.config import Recipe, Runtime, ServiceLink, TrainConfig
from trainer.data import train_transform
from trainer.train import train


class Files(Dataset):
    def __init__(self, paths: list[str], targets: list[int], transform):
        self.paths, self.targets, self.transform = paths, targets, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("L")), self.targets[index]


def bare(cfg: Recipe, paths: list[str], targets: list[int], workers: int) -> float:
    """Images per second of a plain loop doing the trainer's work per step."""
    torch.manual_seed(cfg.seed)
    model = timm.create_model(
        cfg.architecture,
        pretrained=False,
        num_classes=len(fashion_mnist.CLASSES),
        in_chans=cfg.channels,
        drop_rate=cfg.dropout,
        drop_path_rate=cfg.drop_path or None,
    )
    optimizer = create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True) if cfg.ema_decay else None
    dataset = Files(paths, targets, train_transform(cfg, noisy=cfg.randaugment))
    sampler = RandomSampler(dataset, replacement=True, num_samples=cfg.steps * cfg.batch_size)
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers, drop_last=True
    )
    model.train()
    start = time.perf_counter()
    step = 0
    for x, y in loader:
        loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if ema is not None:
            ema.update(model, step=step)
    seconds = time.perf_counter() - start
    assert step == cfg.steps
    return step * cfg.batch_size / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--models", default="resnet18,efficientnet_b0")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, both sides")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    parser.add_argument("--per-class", type=int, default=100, help="labeled images per class")
    parser.add_argument("--ema-decay", type=float, default=0.999, help="0: no EMA, both sides")
    parser.add_argument("--dir", type=Path, default=None, help="bench folder (default: a temp one)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    root = bench_root(args.dir, "nst-bench-train-")
    data = root / "data"
    labeled = data / f"labeled-{args.per_class}"
    env = {"NST_DATA_DIR": str(root / "nst"), "NST_DATA_ROOTS": str(data)}

    rows = []
    # Inside the stack, whose SIGTERM handling unwinds to the removal of the temp folder, also
    # while the images are written.
    with local_stack(root, env, remove=args.dir is None) as stack:
        if not labeled.exists():
            images, labels = fashion_mnist.load("train")
            indices, _ = fashion_mnist.split_indices(labels, per_class=args.per_class, unlabeled=0, seed=0)
            fashion_mnist.write_image_folder(labeled, images, labels, indices)
        client = stack.start_api()
        dataset = client.register_dataset(name="bench-labeled", kind="labeled", split="train", path=labeled)
        manifest = client.create_manifest(labeled_dataset_ids=[dataset["id"]], job_ids=[])
        items = list(client.items(dataset["id"]))
        classes = fashion_mnist.CLASSES
        paths = [item["uri"] for item in items]
        names = dataset["classes"]  # an item's label indexes its dataset's (sorted) classes
        targets = [classes.index(names[item["label"]]) for item in items]
        for architecture in args.models.split(","):
            cfg = TrainConfig(
                ServiceLink(manifest_id=manifest["id"], api_url=stack.url, register=False),
                Recipe(
                    architecture=architecture,
                    image_size=args.image_size,
                    mean=[0.286],  # Fashion-MNIST's, so the bare loop and the trainer match
                    std=[0.353],
                    steps=args.steps,
                    batch_size=args.batch_size,
                    ema_decay=args.ema_decay,
                ),
                Runtime(
                    out_dir=str(root / "runs" / architecture),
                    workers=args.workers,
                    checkpoint_every=0,
                    progress=False,
                ),
            )
            bare_rate = bare(cfg.recipe, paths, targets, cfg.runtime.workers)
            result = train(dataclasses.replace(cfg), client)
            rows.append((architecture, bare_rate, result["images_per_s"], result["images_per_s"] / bare_rate))
            print(f"{architecture}: bare {bare_rate:.1f} img/s, trainer {result['images_per_s']:.1f} img/s")

    print(
        f"\nimage size {args.image_size}, batch {args.batch_size}, {args.steps} steps, "
        f"workers {args.workers}, threads {args.threads}, EMA {args.ema_decay}, "
        f"{len(paths)} labeled images (numpy {np.__version__}, torch {torch.__version__})\n"
    )
    print_table(
        ["model", "size", "bare img/s", "trainer img/s", "ratio"],
        ((a, f"{args.image_size} px", f"{b:.1f}", f"{t:.1f}", f"{ratio:.2f}") for a, b, t, ratio in rows),
        target="ratio >= 0.95",
    )


if __name__ == "__main__":
    main()
