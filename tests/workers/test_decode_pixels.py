"""An image already at the teacher's size skips the transform, with the transform's pixels."""

import numpy as np
import pytest
import torch
from PIL import Image

from workers import decode
from workers.teacher_model import ImageFormat, keeps_pixels, pixel_transform

GREY_28 = ImageFormat(1, 28, "bilinear", (0.5,), (0.5,), 1.0)
RGB_32 = ImageFormat(3, 32, "bicubic", (0.4, 0.5, 0.6), (0.2, 0.2, 0.2), 1.0)
CROPPED = ImageFormat(1, 28, "bilinear", (0.5,), (0.5,), 0.875)
AUGMENTED = ImageFormat(1, 28, "bilinear", (0.5,), (0.5,), 1.0, "rand-m9-n2")


@pytest.fixture
def skipped(monkeypatch) -> list[tuple]:
    """The shapes of the images that skipped the transform."""
    taken, to_tensor = [], decode.pil_to_tensor

    def spied(image):
        taken.append(image.size)
        return to_tensor(image)

    monkeypatch.setattr(decode, "pil_to_tensor", spied)
    return taken


def _transformed(path, image_format: ImageFormat) -> torch.Tensor:
    with Image.open(path) as image:
        return pixel_transform(image_format)(image.convert(image_format.mode))


def _decoded(path, image_format: ImageFormat) -> torch.Tensor:
    pixels, item_id, error, _ = decode.ImageFiles()[(1, str(path), image_format)]
    assert (item_id, error) == (1, "")
    return pixels


def test_only_a_transform_that_keeps_an_image_of_its_size_is_skipped():
    assert keeps_pixels(GREY_28) and keeps_pixels(RGB_32)
    assert not keeps_pixels(CROPPED)  # resizes to 32, then crops the middle 28
    assert not keeps_pixels(AUGMENTED)


def test_fashion_mnist_images_skip_it_with_the_same_pixels(fmnist, skipped):
    files = sorted((fmnist / "unlabeled").glob("*.png"))[:50]
    for path in files:
        assert torch.equal(_decoded(path, GREY_28), _transformed(path, GREY_28))
    assert skipped == [(28, 28)] * len(files)


def test_every_other_image_is_transformed(tmp_path, skipped):
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8), "L").save(tmp_path / "big.png")
    Image.fromarray(np.stack([grey] * 3, -1), "RGB").save(tmp_path / "rgb.jpg", quality=90)
    cases = [
        (tmp_path / "big.png", GREY_28),  # another size
        (tmp_path / "grey.png", CROPPED),  # a transform that changes it
        (tmp_path / "grey.png", RGB_32),  # another size once converted
    ]
    for path, image_format in cases:
        assert torch.equal(_decoded(path, image_format), _transformed(path, image_format)), path
    assert tuple(_decoded(tmp_path / "grey.png", AUGMENTED).shape) == AUGMENTED.shape
    assert skipped == []
    # A colour JPEG of the size for a grey teacher: converted, then skips the transform.
    assert torch.equal(_decoded(tmp_path / "rgb.jpg", GREY_28), _transformed(tmp_path / "rgb.jpg", GREY_28))
    assert skipped == [(28, 28)]
