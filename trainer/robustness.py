"""Robustness of a classifier (the paper's ImageNet-C and FGSM tables) on a labeled split:
accuracy under common corruptions at five severities, the mean corruption error against a
reference model, and accuracy under FGSM.

The corruptions are our own implementation of Hendrycks & Dietterich (2019)'s formulas with the
CIFAR-10-C severities (made for 32-pixel images, so they suit small ones): the `imagecorruptions`
package refuses images under 32 pixels and, with NumPy 2 and current scikit-image, fails on fog,
glass and Gaussian blur. The subset kept is the one that applies to small grayscale and RGB
tensors without image files or ImageMagick: noise (Gaussian, shot, impulse, speckle), blur
(Gaussian, defocus, zoom), fog, and digital (brightness, contrast, saturate for RGB only, JPEG,
pixelate). Motion, glass, snow, frost, spatter and elastic are left out.

Everything works on [0, 1] pixels at the model's input size, before normalisation; random
corruptions draw from a generator seeded by (seed, corruption, severity, batch), so two models
evaluated with the same batch size see the same corrupted images.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from trainer.data import ImageTargets, Split

SEVERITIES = 5
EPSILONS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)


def _gaussian_noise(x, c, g):
    return x + torch.randn(x.shape, generator=g) * c


def _shot_noise(x, c, g):
    return torch.poisson(x * c, generator=g) / c


def _impulse_noise(x, c, g):
    # skimage's random_noise(mode="s&p", amount=c): a share c of the values, half salt half pepper
    hit = torch.rand(x.shape, generator=g) < c
    salt = torch.rand(x.shape, generator=g) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def _speckle_noise(x, c, g):
    return x + x * torch.randn(x.shape, generator=g) * c


def _blur(x, kernel: torch.Tensor):
    channels = x.shape[1]
    k = kernel.to(x.dtype)[None, None].expand(channels, 1, *kernel.shape)
    pad = kernel.shape[-1] // 2
    return F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), k, groups=channels)


def _gaussian_kernel(sigma: float, radius: int | None = None) -> torch.Tensor:
    radius = radius if radius is not None else max(1, int(4 * sigma + 0.5))  # scipy's truncate=4
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def _gaussian_blur(x, c, g):
    return _blur(x, _gaussian_kernel(c))


def _defocus_blur(x, c, g):
    radius, alias_blur = c
    half = max(8, math.ceil(radius))
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).double()
    disk = disk / disk.sum()
    # the published code smooths the aliased disk with a 3x3 Gaussian (5x5 past radius 8)
    smooth = _gaussian_kernel(alias_blur, radius=1 if radius <= 8 else 2)
    disk = F.conv2d(disk[None, None], smooth[None, None], padding=smooth.shape[-1] // 2)[0, 0]
    return _blur(x, disk)


def _clipped_zoom(x, zoom: float):
    size = x.shape[-1]
    crop = math.ceil(size / zoom)
    top = (size - crop) // 2
    patch = x[..., top : top + crop, top : top + crop]
    grown = F.interpolate(patch, size=math.ceil(crop * zoom), mode="bilinear", align_corners=False)
    trim = (grown.shape[-1] - size) // 2
    return grown[..., trim : trim + size, trim : trim + size]


def _zoom_blur(x, c, g):
    zooms = np.arange(1, c, 0.01)
    out = sum(_clipped_zoom(x, float(z)) for z in zooms)
    return (x + out) / (len(zooms) + 1)


def _plasma(size: int, decay: float, g) -> torch.Tensor:
    """The published diamond-square fractal of side ``size`` (a power of two), in [0, 1]."""
    grid = torch.zeros(size, size, dtype=torch.float64)
    step, wibble = size, 100.0

    def wibbled_mean(total):
        return (
            total / 4 + wibble * (torch.rand(total.shape, generator=g, dtype=torch.float64) * 2 - 1) * wibble
        )

    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        squares = corners + torch.roll(corners, -1, 0)
        squares = squares + torch.roll(squares, -1, 1)
        grid[half:size:step, half:size:step] = wibbled_mean(squares)
        centres = grid[half:size:step, half:size:step]
        corners = grid[0:size:step, 0:size:step]
        left = centres + torch.roll(centres, 1, 0) + corners + torch.roll(corners, -1, 1)
        top = centres + torch.roll(centres, 1, 1) + corners + torch.roll(corners, -1, 0)
        grid[0:size:step, half:size:step] = wibbled_mean(left)
        grid[half:size:step, 0:size:step] = wibbled_mean(top)
        step, wibble = half, wibble / decay
    grid = grid - grid.min()
    return grid / grid.max()


def _fog(x, c, g):
    strength, decay = c
    size = 1 << math.ceil(math.log2(max(x.shape[-2:])))
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    fog = torch.stack([_plasma(size, decay, g)[: x.shape[-2], : x.shape[-1]] for _ in range(len(x))])
    return (x + strength * fog[:, None].to(x.dtype)) * peak / (peak + strength)


def _contrast(x, c, g):
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * c + means


def _brightness(x, c, g):
    # HSV with hue and saturation kept: every channel scales with the value V = max channel
    value = x.amax(dim=1, keepdim=True)
    brighter = (value + c).clamp(max=1.0)
    return torch.where(value > 0, x * brighter / value.clamp(min=1e-12), brighter.expand_as(x))


def _saturate(x, c, g):
    scale, shift = c
    value = x.amax(dim=1, keepdim=True)
    low = x.amin(dim=1, keepdim=True)
    sat = torch.where(value > 0, (value - low) / value.clamp(min=1e-12), torch.zeros_like(value))
    new_sat = (sat * scale + shift).clamp(0.0, 1.0)
    # a channel is V * (1 - S * k(hue)); grey pixels have hue 0 (k = 0, 1, 1), as skimage's
    k = torch.where(
        sat > 0, (value - x) / (value * sat).clamp(min=1e-12), x.new_tensor([0.0, 1.0, 1.0])[:, None, None]
    )
    return value * (1 - new_sat * k)


def _jpeg(x, c, g):
    out = []
    for image in x:
        pixels = (image * 255).round().byte().permute(1, 2, 0).squeeze(-1).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=c)
        decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255
        out.append(torch.from_numpy(decoded).reshape(image.shape[1], image.shape[2], -1).permute(2, 0, 1))
    return torch.stack(out)


def _pixelate(x, c, g):
    size = x.shape[-1]
    small = F.interpolate(x, size=max(1, int(size * c)), mode="area")
    return F.interpolate(small, size=size, mode="nearest")


Corruption = Callable[[torch.Tensor, object, torch.Generator], torch.Tensor]

# name: (function, its parameter per severity 1..5, the channel counts it applies to)
CORRUPTIONS: dict[str, tuple[Corruption, Sequence, tuple[int, ...]]] = {
    "gaussian_noise": (_gaussian_noise, [0.04, 0.06, 0.08, 0.09, 0.10], (1, 3)),
    "shot_noise": (_shot_noise, [500, 250, 100, 75, 50], (1, 3)),
    "impulse_noise": (_impulse_noise, [0.01, 0.02, 0.03, 0.05, 0.07], (1, 3)),
    "speckle_noise": (_speckle_noise, [0.06, 0.1, 0.12, 0.16, 0.2], (1, 3)),
    "gaussian_blur": (_gaussian_blur, [0.4, 0.6, 0.7, 0.8, 1.0], (1, 3)),
    "defocus_blur": (_defocus_blur, [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)], (1, 3)),
    "zoom_blur": (_zoom_blur, [1.06, 1.11, 1.16, 1.21, 1.26], (1, 3)),
    "fog": (_fog, [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)], (1, 3)),
    "brightness": (_brightness, [0.05, 0.1, 0.15, 0.2, 0.3], (1, 3)),
    "contrast": (_contrast, [0.75, 0.5, 0.4, 0.3, 0.15], (1, 3)),
    "saturate": (_saturate, [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)], (3,)),
    "jpeg_compression": (_jpeg, [80, 65, 58, 50, 40], (1, 3)),
    "pixelate": (_pixelate, [0.95, 0.9, 0.85, 0.75, 0.65], (1, 3)),
}


def corruption_names(channels: int) -> list[str]:
    return [name for name, (_, _, applies) in CORRUPTIONS.items() if channels in applies]


def corrupt(x: torch.Tensor, name: str, severity: int, generator: torch.Generator) -> torch.Tensor:
    """``x``: a batch (N, C, H, W) of [0, 1] pixels; the same shape back, still in [0, 1]."""
    function, params, _ = CORRUPTIONS[name]
    if not 1 <= severity <= SEVERITIES:
        raise ValueError(f"severity: {severity} is not in 1..{SEVERITIES}")
    return function(x, params[severity - 1], generator).clamp(0.0, 1.0).to(x.dtype)


def _seed(seed: int, name: str, severity: int, batch: int) -> int:
    return zlib.crc32(f"{seed}:{name}:{severity}:{batch}".encode())


def fgsm_direction(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The sign of the loss's gradient at ``x``: FGSM's step for every epsilon, so one backward
    pass serves them all (``model`` normalises; pixels in [0, 1])."""
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad.sign()


def fgsm(x: torch.Tensor, direction: torch.Tensor, epsilon: float) -> torch.Tensor:
    """One signed-gradient step of size ``epsilon`` in [0, 1] pixel units."""
    return (x + epsilon * direction).clamp(0.0, 1.0)


class Normalised(torch.nn.Module):
    """The model behind its normalisation, so that attacks and corruptions act on pixels."""

    def __init__(self, model: torch.nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def robustness(
    model: Normalised,
    split: Split,
    pixel_transform,
    mode: str,
    device: torch.device,
    *,
    corruptions: Sequence[str] = (),
    epsilons: Sequence[float] = EPSILONS,
    batch_size: int = 256,
    num_workers: int = 0,
    seed: int = 0,
) -> dict:
    """Accuracy clean, per corruption and severity, and per FGSM epsilon. ``pixel_transform``
    turns an image into [0, 1] pixels at the model's size (its eval transform, unnormalised)."""
    model = model.to(device).eval()
    loader = DataLoader(
        ImageTargets(split, pixel_transform, mode),
        batch_size=batch_size,
        num_workers=num_workers,
        generator=torch.Generator(),
    )
    right = {"clean": 0, **{(n, s): 0 for n in corruptions for s in range(1, SEVERITIES + 1)}}
    right |= {("fgsm", e): 0 for e in epsilons}
    total = 0

    def correct(images, targets) -> int:
        with torch.inference_mode():
            return int((model(images.to(device)).argmax(dim=1).cpu() == targets).sum())

    for batch, (x, y) in enumerate(loader):
        total += len(y)
        clean = correct(x, y)
        right["clean"] += clean
        for name in corruptions:
            for severity in range(1, SEVERITIES + 1):
                g = torch.Generator().manual_seed(_seed(seed, name, severity, batch))
                right[name, severity] += correct(corrupt(x, name, severity, g), y)
        if any(epsilons):
            x_on = x.to(device)  # once for the gradient and every step
            direction = fgsm_direction(model, x_on, y.to(device))
        for epsilon in epsilons:
            # Epsilon 0 is the clean images: their count, not a second pass.
            right["fgsm", epsilon] += correct(fgsm(x_on, direction, epsilon), y) if epsilon else clean
    return {
        "count": total,
        "clean": right["clean"] / total,
        "corruptions": {
            name: [right[name, s] / total for s in range(1, SEVERITIES + 1)] for name in corruptions
        },
        "fgsm": [{"epsilon": e, "top1": right["fgsm", e] / total} for e in epsilons],
    }


def mean_corruption_error(result: dict, reference: dict) -> dict:
    """The paper's mCE (Hendrycks & Dietterich): per corruption, the model's errors summed over
    severities over the reference's, in percent, averaged over corruptions. A corruption the
    reference never errs on has no ratio and is left out (named in ``skipped``)."""
    ratios, skipped = {}, []
    for name, accuracies in result["corruptions"].items():
        if name not in reference["corruptions"]:
            skipped.append(name)
            continue
        ours = sum(1 - a for a in accuracies)
        theirs = sum(1 - a for a in reference["corruptions"][name])
        if theirs <= 0:
            skipped.append(name)
            continue
        ratios[name] = 100 * ours / theirs
    mce = sum(ratios.values()) / len(ratios) if ratios else None
    return {"mce": mce, "corruption_errors": ratios, "skipped": skipped}
