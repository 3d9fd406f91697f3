"""An image already at the teacher's size skips the transform, with the transform's pixels; and
an 8-bit PNG in the teacher's layout is decoded by OpenCV, with Pillow's pixels."""

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
    taken, to_tensor = [], decode._as_tensor

    def spied(array):
        taken.append(array.shape[1::-1])  # (width, height), as Pillow sizes
        return to_tensor(array)

    monkeypatch.setattr(decode, "_as_tensor", spied)
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


def _png_variants(folder, rng) -> dict[str, tuple]:
    """PNGs of every layout Pillow writes, each with whether OpenCV should take it for a grey
    and for an RGB teacher."""
    grey = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    rgb = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    images = {
        "grey": (Image.fromarray(grey, "L"), {}, (True, False)),
        "grey-interlaced": (Image.fromarray(grey, "L"), {"interlace": 1}, (True, False)),
        # OpenCV ignores a grey PNG's transparent value, as Pillow's conversion to L does.
        "grey-transparent": (Image.fromarray(grey, "L"), {"transparency": int(grey[0, 0])}, (True, False)),
        "rgb": (Image.fromarray(rgb, "RGB"), {}, (False, True)),
        "rgb-interlaced": (Image.fromarray(rgb, "RGB"), {"interlace": 1}, (False, True)),
        "rgb-transparent": (
            Image.fromarray(rgb, "RGB"),
            {"transparency": tuple(int(v) for v in rgb[0, 0])},
            (False, False),
        ),
        "rgba": (Image.fromarray(np.dstack([rgb, grey]), "RGBA"), {}, (False, False)),
        "grey-alpha": (Image.fromarray(np.dstack([grey, grey[::-1]]), "LA"), {}, (False, False)),
        "palette": (Image.fromarray(rgb, "RGB").quantize(64), {}, (False, False)),
        "one-bit": (Image.fromarray(grey > 127), {}, (False, False)),
        "four-bit": (Image.fromarray(grey // 16 * 16, "L"), {"bits": 4}, (False, False)),
        "sixteen-bit": (Image.fromarray(grey.astype(np.uint16) * 257), {}, (False, False)),
        "rgb-large": (
            Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8), "RGB"),
            {},
            (False, True),
        ),
    }
    paths = {}
    for name, (image, options, taken) in images.items():
        image.save(folder / f"{name}.png", **options)
        paths[name] = (folder / f"{name}.png", taken)
    return paths


def test_opencv_decodes_plain_pngs_with_pillows_pixels_and_leaves_the_rest_to_pillow(tmp_path, monkeypatch):
    from workers import png

    took, opencv = [], png.decode
    monkeypatch.setattr(png, "decode", lambda data, channels: took.append(r := opencv(data, channels)) or r)
    for name, (path, taken) in _png_variants(tmp_path, np.random.default_rng(3)).items():
        for image_format, expected in zip((GREY_28, RGB_32), taken, strict=True):
            took.clear()
            assert torch.equal(_decoded(path, image_format), _transformed(path, image_format)), (
                name,
                image_format,
            )
            assert (took[0] is not None) == expected, (name, image_format.mode)


@pytest.mark.parametrize("cut", [40, 100, 400])
def test_a_cut_short_png_is_recorded_not_labeled(tmp_path, cut):
    whole = tmp_path / "whole.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (28, 28), dtype=np.uint8), "L").save(whole)
    short = tmp_path / "short.png"
    short.write_bytes(whole.read_bytes()[:cut])
    pixels, item_id, error, _ = decode.ImageFiles()[(7, str(short), GREY_28)]
    assert item_id == 7 and error and not pixels.any()


def test_a_png_over_pillows_pixel_limit_is_refused_as_pillow_refuses_it(tmp_path, monkeypatch):
    path = tmp_path / "grey.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (28, 28), dtype=np.uint8), "L").save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 28 * 28 // 4)  # over twice the limit: an error
    pixels, item_id, error, _ = decode.ImageFiles()[(3, str(path), GREY_28)]
    assert error.startswith("DecompressionBombError") and not pixels.any()
