"""The paper's noise, defined once: the trainer's students train with it, and a labeling job asks
for it only as the *noised teacher* ablation (docs/METHOD.md).

Input noise is RandAugment; model noise is dropout before the classifier and stochastic depth.
"""

from __future__ import annotations

DROPOUT = 0.5  # the paper's dropout rate before the classifier
DROP_PATH = 0.2  # stochastic depth: the survival probability of the last block is 0.8
RANDAUGMENT_OPS = 2


def default_magnitude(image_size: int) -> int:
    """RandAugment magnitude for an image size: 5 up to 64 px (the authors' SVHN script),
    6 at 224 px (small EfficientNets), rising to the paper's 27 at 800 px (EfficientNet-L2)."""
    points = [(64, 5), (224, 6), (800, 27)]
    if image_size <= points[0][0]:
        return points[0][1]
    for (s0, m0), (s1, m1) in zip(points, points[1:], strict=False):
        if image_size <= s1:
            return round(m0 + (m1 - m0) * (image_size - s0) / (s1 - s0))
    return points[-1][1]


def randaugment_spec(
    image_size: int, magnitude: int | None = None, ops: int = RANDAUGMENT_OPS, *, increasing: bool = False
) -> str:
    """timm's RandAugment string; ``mmax`` lifts timm's clip at 10, as the authors' magnitudes
    above 10 are not clipped.

    ``increasing`` picks timm's ``inc1`` ops. The authors' ops (the default) do not all grow
    stronger with the magnitude: Posterize keeps ``int(0.4 m)`` bits and the colour, contrast,
    brightness and sharpness ops scale by ``0.18 m + 0.1``, so below 5 those grow *harsher* (at
    5 the scaling ones are the identity). With ``inc1`` every op's strength rises from nothing at
    0, which is what a smaller magnitude is usually meant to mean."""
    m = default_magnitude(image_size) if magnitude is None else magnitude
    return f"rand-m{m}-n{ops}-mmax{max(10, m)}" + ("-inc1" if increasing else "")


def check_randaugment(spec: str) -> None:
    """Raise ValueError when one of the spec's ops cannot run at its magnitude (the authors'
    Posterize keeps 0 bits below magnitude 3, timm's increasing one from 10 up, and Pillow
    refuses both), so that a recipe fails before training rather than in a loader process."""
    from PIL import Image  # here: the recipe's defaults above are read without PIL and timm
    from timm.data.auto_augment import rand_augment_transform

    image = Image.new("RGB", (8, 8))  # timm's default fill is an RGB triple
    for op in rand_augment_transform(spec, {}).ops:
        magnitude = max(0.0, min(op.magnitude, op.magnitude_max or 10))  # as the op clips it
        args = op.level_fn(magnitude, op.hparams) if op.level_fn is not None else ()
        try:
            op.aug_fn(image, *args, **op.kwargs)
        except ValueError as error:
            problem = f"{op.name} cannot run at magnitude {magnitude:g} ({error})"
            raise ValueError(f"RandAugment {spec!r}: {problem}") from None


def model_noise_on(model):
    """Dropout and stochastic depth active, everything else as in eval: normalisation layers
    keep their running statistics (a batch's own would make one image's label depend on the
    others in its batch, and would change the model). Returns ``model``."""
    from torch import nn  # here: the recipe's defaults above are read without torch

    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            module.eval()
    return model
