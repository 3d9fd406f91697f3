"""Faster ways to decode and resize 224 px inputs, held to the labels' fidelity gate.

    .venv/bin/python -m bench.decode_paths [--photos /tmp/fb/x/foolbox/data] [--repeats 5] [--threads 1]

With OpenVINO the forward pass outruns the decode at 224 px (docs/BENCHMARKS.md), so each
candidate is timed against the worker's own path, Pillow's decode and timm's eval transform
(``workers.teacher_model.pixel_transform``), on the ``foolbox`` wheel's ImageNet JPEGs (512 px)
and their mirror images, one image at a time in one process with ``--threads`` torch threads (a
decode process runs one). Each candidate's pixels then go through the ImageNet
EfficientNet-Lite0 (eager float32) beside the worker's: the largest pixel difference, argmax
agreement and the largest confidence difference, against the gate of the inference modes
(bench/label_fidelity.py: at most 0.5% of argmaxes moved, no confidence by more than 0.01).

- ``pillow + draft``: the JPEG decoded at a reduced scale (``Image.draft``, the DCT's own
  downscaling) to at least the resize size, then the same transform.
- ``torchvision decode``: ``torchvision.io.decode_jpeg`` (libjpeg-turbo), then the same
  transform (torchvision's decoders are deprecated from 0.29, in favour of TorchCodec).
- ``tensor resize``: Pillow's decode, then the same resize and crop on the uint8 tensor
  (torchvision's kernels instead of Pillow's).
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import decode_jpeg
from torchvision.transforms import Compose

from bench.common import print_table
from bench.label_fidelity import GATE_AGREEMENT, GATE_CONFIDENCE, lite0_teacher, photo_files
from workers.teacher_model import normalise, pixel_transform


def paths(fmt) -> dict:
    transform = pixel_transform(fmt)  # Pillow's geometry, then PILToTensor
    geometry = Compose(transform.transforms[:-1])  # the same steps, given a tensor
    resize_to = geometry.transforms[0].size
    resize_to = resize_to if isinstance(resize_to, int) else min(resize_to)

    def pillow(data: bytes) -> torch.Tensor:
        return transform(Image.open(io.BytesIO(data)).convert("RGB"))

    def pillow_draft(data: bytes) -> torch.Tensor:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (resize_to, resize_to))  # keeps at least this size, in both sides
        return transform(image.convert("RGB"))

    def torchvision_decode(data: bytes) -> torch.Tensor:
        with warnings.catch_warnings():  # deprecated from torchvision 0.29: measured here, not used
            warnings.simplefilter("ignore", DeprecationWarning)
            pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        return transform(Image.fromarray(pixels.permute(1, 2, 0).numpy()))

    def tensor_resize(data: bytes) -> torch.Tensor:
        pixels = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
        return geometry(torch.from_numpy(pixels).permute(2, 0, 1))

    return {
        "pillow (the worker's)": pillow,
        "pillow + draft": pillow_draft,
        "torchvision decode": torchvision_decode,
        "tensor resize": tensor_resize,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=Path("/tmp/fb/x/foolbox/data"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not args.photos.is_dir():
        raise SystemExit(f"no photos in {args.photos} (--photos: the foolbox wheel's data folder)")
    with tempfile.TemporaryDirectory(prefix="nst-decode-") as tmp:
        model, fmt = lite0_teacher(Path(tmp))
        files = [f for f in photo_files(Path(tmp), args.photos) if f.endswith(".jpg")]
        datas = [Path(f).read_bytes() for f in files]
        sizes = sorted({"x".join(map(str, Image.open(f).size)) for f in files})
    torch.set_num_threads(args.threads)
    candidates = paths(fmt)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.repeats):  # alternated, so that a change in the host's load hits each alike
        for name, decode in candidates.items():
            start = time.perf_counter()
            for data in datas:
                decode(data)
            times[name].append((time.perf_counter() - start) / len(datas) * 1000)
    torch.set_num_threads(2)
    pixels = {name: torch.stack([decode(d) for d in datas]) for name, decode in candidates.items()}
    with torch.inference_mode():
        probs = {name: model(normalise(p, fmt)).softmax(dim=1) for name, p in pixels.items()}
    baseline_name = next(iter(candidates))
    baseline, reference = statistics.median(times[baseline_name]), probs[baseline_name]
    rows = []
    for name in candidates:
        ms = statistics.median(times[name])
        diff = (pixels[name].int() - pixels[baseline_name].int()).abs()
        agree = (probs[name].argmax(1) == reference.argmax(1)).float().mean().item()
        worst = (probs[name].max(1).values - reference.max(1).values).abs().max().item()
        gate = agree >= GATE_AGREEMENT and worst <= GATE_CONFIDENCE
        rows.append(
            (
                name,
                f"{ms:.2f}",
                f"{baseline / ms:.2f}",
                f"{diff.max().item()} ({(diff > 0).float().mean().item():.2%})",
                f"{agree:.2%}",
                f"{worst:.4f}",
                "pass" if gate else "FAIL",
            )
        )
    print(
        f"\n{len(datas)} JPEGs ({', '.join(sizes)} px), "
        f"teacher efficientnet_lite0 at {fmt.image_size} px ({fmt.interpolation}, crop {fmt.crop_pct}), "
        f"{args.threads} torch thread(s), medians of {args.repeats}\n"
    )
    print_table(
        [
            "path",
            "ms / image",
            "speed vs the worker's",
            "max pixel diff (pixels differing)",
            "argmax agreement",
            "max confidence diff",
            "gate",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
