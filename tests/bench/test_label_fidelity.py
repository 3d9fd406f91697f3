"""The fidelity benchmark decodes as a worker does: its images are what a labeling job's model
sees, or its agreement figures would describe some other input."""

import torch
from PIL import Image

from bench.label_fidelity import decode
from workers.teacher_model import ImageFormat, eval_transform

FORMAT = ImageFormat(1, 28, "bilinear", (0.286,), (0.353,), 1.0)


def test_the_benchmarks_decode_gives_the_eval_transforms_images(fmnist):
    files = [str(p) for p in sorted((fmnist / "unlabeled").rglob("*.png"))[:70]]  # two batches
    images, seconds_per_batch = decode(files, FORMAT)
    expected = []
    for path in files:
        with Image.open(path) as image:
            expected.append(eval_transform(FORMAT)(image.convert("L")))
    assert torch.equal(images, torch.stack(expected)) and seconds_per_batch > 0
