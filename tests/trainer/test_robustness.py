"""Corruptions, FGSM and mCE on the tiny teacher and real Fashion-MNIST test images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cli.fashion_mnist import CLASSES
from nst.checkpoint import load_teacher
from nst.transforms import eval_transform
from tests.utils.teacher import load_folder
from trainer.data import Split
from trainer.robustness import (
    CORRUPTIONS,
    SEVERITIES,
    Normalised,
    corrupt,
    corruption_names,
    fgsm,
    fgsm_direction,
    mean_corruption_error,
    robustness,
)


@pytest.fixture(scope="module")
def pixels(fmnist):
    """Sixteen real test images as [0, 1] pixels, and the same as RGB."""
    x, _, _ = load_folder(fmnist / "test")
    gray = (x[:16] * 0.353 + 0.286).clamp(0, 1)
    return {1: gray, 3: gray.expand(-1, 3, -1, -1) * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)}


@pytest.mark.parametrize("channels", [1, 3])
def test_corruptions_keep_shape_and_range_and_grow_with_severity(pixels, channels):
    x = pixels[channels]
    assert set(corruption_names(3)) == set(CORRUPTIONS) and "saturate" not in corruption_names(1)
    for name in corruption_names(channels):
        change = []
        for severity in range(1, SEVERITIES + 1):
            out = corrupt(x, name, severity, torch.Generator().manual_seed(0))
            assert out.shape == x.shape and out.dtype == x.dtype, name
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0, name
            change.append(float((out - x).abs().mean()))
        # the published severities are not all monotone in pixel change (saturate's third one
        # raises saturation), but the fifth always changes the image more than the first
        assert 0 < change[0] < change[-1], (name, change)
        again = corrupt(x, name, 3, torch.Generator().manual_seed(0))
        assert torch.equal(again, corrupt(x, name, 3, torch.Generator().manual_seed(0))), name


def test_fgsm_at_zero_is_clean_accuracy_and_falls_with_epsilon_and_self_mce_is_100(fmnist, teacher_file):
    model, metadata = load_teacher(teacher_file)
    _, y, paths = load_folder(fmnist / "test")
    split = Split([str(p) for p in paths], y.numpy(), np.ones(len(y), dtype=np.int64))
    image_format = metadata.model_dump(include={"image_size", "channels", "interpolation", "crop_pct"})
    pixel_transform = eval_transform(**image_format, mean=[0.0], std=[1.0])
    run = {
        "split": split,
        "pixel_transform": pixel_transform,
        "mode": "L",
        "device": torch.device("cpu"),
        "corruptions": ["gaussian_noise", "contrast"],
        "epsilons": [0.0, 0.02, 0.1],
    }
    result = robustness(Normalised(model, metadata.mean, metadata.std), **run)
    assert len(CLASSES) == 10 and result["count"] == 100
    accuracies = [point["top1"] for point in result["fgsm"]]
    assert accuracies[0] == result["clean"] > 0.3
    assert accuracies[0] > accuracies[1] > accuracies[2]
    assert len(result["corruptions"]["contrast"]) == SEVERITIES

    # the same seeded corruptions again: the teacher against itself is exactly 100
    again = robustness(Normalised(model, metadata.mean, metadata.std), **run | {"epsilons": []})
    assert again["corruptions"] == result["corruptions"]
    assert mean_corruption_error(again, result)["mce"] == pytest.approx(100.0)


def test_mce_averages_error_ratios_over_corruptions():
    ours = {"corruptions": {"a": [0.9] * 5, "b": [0.5] * 5, "c": [0.0] * 5}}
    reference = {"corruptions": {"a": [0.8] * 5, "b": [0.5] * 5, "c": [1.0] * 5}}
    result = mean_corruption_error(ours, reference)
    assert result["corruption_errors"] == pytest.approx({"a": 50.0, "b": 100.0})
    assert result["mce"] == pytest.approx(75.0) and result["skipped"] == ["c"]


class _Counting(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def test_fgsm_takes_one_gradient_per_batch_and_steps_along_its_sign(fmnist, teacher_file, pixels):
    model, metadata = load_teacher(teacher_file)
    net = Normalised(model, metadata.mean, metadata.std).eval()
    x, y = pixels[1], torch.arange(16) % 10
    # The step is the gradient's sign, computed here the plain way, times epsilon, clamped.
    x_grad = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(net(x_grad), y).backward()
    expected = (x + 0.05 * x_grad.grad.sign()).clamp(0, 1)
    assert torch.equal(fgsm(x, fgsm_direction(net, x, y), 0.05), expected)

    _, labels, paths = load_folder(fmnist / "test")
    split = Split([str(p) for p in paths[:40]], labels[:40].numpy(), np.ones(40, dtype=np.int64))
    image_format = metadata.model_dump(include={"image_size", "channels", "interpolation", "crop_pct"})
    counting = _Counting(net)
    robustness(
        counting,
        split,
        eval_transform(**image_format, mean=[0.0], std=[1.0]),
        "L",
        torch.device("cpu"),
        epsilons=[0.0, 0.02, 0.1],
        batch_size=20,
    )
    # Per batch of the two: the clean pass, one gradient, one pass per epsilon above 0.
    assert counting.calls == 2 * (1 + 1 + 2)
