"""The student's noise and loss, checked directly: each switch really changes what it claims."""

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from nst.noise import default_magnitude
from nst.transforms import eval_transform
from trainer.config import Recipe, RecipeError
from trainer.data import EndlessSampler, train_transform
from trainer.train import build_model, pseudo_loss, soft_cross_entropy


def _cfg(**overrides) -> Recipe:
    return Recipe(architecture="resnet10t", mean=[0.286], std=[0.353], **overrides)


def test_soft_target_loss_equals_a_hand_computed_value():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    targets = torch.tensor([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])
    z1 = math.log(math.exp(2) + math.exp(0) + math.exp(-1))
    row1 = -(0.7 * (2 - z1) + 0.2 * (0 - z1) + 0.1 * (-1 - z1))
    row2 = -(0.5 - math.log(3 * math.exp(0.5)))
    assert soft_cross_entropy(logits, targets).item() == pytest.approx((row1 + row2) / 2, rel=1e-6)
    # A one-hot soft target is ordinary cross-entropy; hard targets take that path directly.
    hard = torch.tensor([0, 1])
    one_hot = torch.nn.functional.one_hot(hard, 3).float()
    assert pseudo_loss(logits, one_hot).item() == pytest.approx(pseudo_loss(logits, hard).item())


def _draw(transform, image, seed: int) -> torch.Tensor:
    # Every RNG timm's transforms draw from: Python's (crop, flip, magnitudes), NumPy's (which
    # RandAugment operations), torch's.
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return transform(image)


def test_randaugment_changes_what_the_student_sees(fmnist):
    cfg = _cfg()
    plain, noisy = train_transform(cfg, noisy=False), train_transform(cfg, noisy=True)
    assert "RandAugment" in repr(noisy) and "RandAugment" not in repr(plain)
    assert "ColorJitter" not in repr(plain)  # switching RandAugment off adds no other noise
    images = [Image.open(p).convert("L") for p in sorted((fmnist / "unlabeled").glob("*.png"))[:16]]
    differ = 0
    for seed, image in enumerate(images):
        baseline = _draw(plain, image, seed)
        assert torch.equal(baseline, _draw(plain, image, seed))
        # Same seed, so the same crop and flip: only RandAugment can make these differ.
        differ += not torch.allclose(baseline, _draw(noisy, image, seed))
    assert differ >= 8
    clean = eval_transform(**cfg.image_format)
    assert torch.equal(clean(images[0]), clean(images[0]))
    assert cfg.randaugment_spec == "rand-m5-n2-mmax10"


def test_magnitude_scales_with_image_size_and_reaches_the_papers_27():
    assert default_magnitude(28) == 5 and default_magnitude(224) == 6
    assert default_magnitude(800) == 27 and default_magnitude(1000) == 27
    assert _cfg(randaugment_magnitude=27).randaugment_spec == "rand-m27-n2-mmax27"


def _outputs_vary(model, x, train: bool) -> bool:
    model.train(train)
    with torch.no_grad():
        return not torch.allclose(model(x), model(x))


def _freeze_batch_norm(model) -> None:
    """Fixed batch-norm statistics, so only dropout or drop-path can make two passes differ;
    unit gammas, because timm zero-initialises the last BN of each residual branch."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.fill_(1.0)
            module.eval()
            module.train = lambda mode=True, m=module: m


@pytest.mark.parametrize(("dropout", "drop_path"), [(0.5, 0.0), (0.0, 0.2)])
def test_dropout_and_drop_path_are_active_in_train_mode_only(dropout, drop_path):
    torch.manual_seed(0)
    model = build_model(_cfg(dropout=dropout, drop_path=drop_path), num_classes=10)
    _freeze_batch_norm(model)
    x = torch.randn(4, 1, 28, 28)
    assert _outputs_vary(model, x, train=True)
    assert not _outputs_vary(model, x, train=False)


def test_drop_path_decays_linearly_to_the_last_block():
    model = build_model(_cfg(drop_path=0.2), num_classes=10)
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and rates[-1] == pytest.approx(0.2) and rates == sorted(rates)
    assert model.drop_rate == 0.5


def test_noise_switched_off_makes_training_deterministic():
    torch.manual_seed(0)
    model = build_model(_cfg(dropout=0.0, drop_path=0.0), num_classes=10)
    _freeze_batch_norm(model)
    assert not _outputs_vary(model, torch.randn(4, 1, 28, 28), train=True)
    assert not any(type(m).__name__ == "DropPath" for m in model.modules())


def test_sampler_honours_copies_and_resumes_where_it_stopped():
    copies = np.array([1, 3, 0, 2])
    sampler = EndlessSampler(copies, seed=7)
    first_epoch = sorted(sampler.epoch_order(0).tolist())
    assert first_epoch == [0, 1, 1, 1, 3, 3]
    stream = iter(sampler)
    taken = [next(stream) for _ in range(15)]
    resumed = iter(EndlessSampler(copies, seed=7, start=9))
    assert [next(resumed) for _ in range(6)] == taken[9:]


def test_a_magnitude_an_op_cannot_run_at_is_refused_before_training():
    with pytest.raises(RecipeError, match="Posterize cannot run at magnitude 2") as refused:
        _cfg(randaugment_magnitude=2).check()
    assert refused.value.field == "randaugment_magnitude"
    # timm's increasing ops run there (and at 0, which is no longer read as "the default")...
    for magnitude in (0, 2, 9):
        recipe = _cfg(randaugment_magnitude=magnitude, randaugment_increasing=True)
        recipe.check()
        assert recipe.randaugment_spec == f"rand-m{magnitude}-n2-mmax10-inc1"
    # ... but keep no bits at all from 10 up.
    with pytest.raises(RecipeError, match="PosterizeIncreasing cannot run at magnitude 10"):
        _cfg(randaugment_magnitude=10, randaugment_increasing=True).check()
    _cfg(randaugment_magnitude=2, randaugment=False).check()  # no RandAugment, nothing to refuse
    _cfg().check()


def test_the_increasing_ops_run_where_the_authors_posterize_cannot(fmnist):
    cfg = _cfg(randaugment_magnitude=2, randaugment_increasing=True)
    plain, noisy = train_transform(cfg, noisy=False), train_transform(cfg, noisy=True)
    assert "PosterizeIncreasing" in repr(noisy)
    images = [Image.open(p).convert("L") for p in sorted((fmnist / "unlabeled").glob("*.png"))[:16]]
    # 16 draws of two ops from 15 reach Posterize with near certainty; the authors' would raise.
    differ = sum(not torch.allclose(_draw(plain, im, s), _draw(noisy, im, s)) for s, im in enumerate(images))
    assert differ >= 4
