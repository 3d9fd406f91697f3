import math

import pytest
import torch

from nst.targets import TEMPERATURE_MIN
from trainer.calibration import BINS, fit_temperature, nll, reliability


def _calibrated(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes, confidence p for class 0 drawn in [0.5, 1), right with probability p."""
    g = torch.Generator().manual_seed(seed)
    p = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    logits = torch.stack([p.log(), (1 - p).log()], dim=1)
    targets = (torch.rand(n, generator=g, dtype=torch.float64) >= p).long()
    return logits, targets


def test_ece_of_a_calibrated_model_is_near_zero_and_of_an_overconfident_one_is_not():
    logits, targets = _calibrated(200_000)
    calibrated = reliability(logits, targets)
    assert len(calibrated["bins"]) == BINS and calibrated["ece"] < 0.005
    assert sum(b["count"] for b in calibrated["bins"]) == len(targets)
    overconfident = reliability(logits * 4, targets)
    assert overconfident["ece"] > 0.1


def test_fitted_temperature_lowers_the_nll_of_overconfident_logits():
    logits, targets = _calibrated(20_000, seed=1)
    temperature = fit_temperature(logits * 3, targets)
    assert temperature == pytest.approx(3.0, rel=0.1)
    assert nll(logits * 3, targets, temperature) < nll(logits * 3, targets)
    assert math.isclose(reliability(logits * 3, targets, temperature=temperature)["temperature"], temperature)


def test_a_val_split_the_teacher_gets_all_right_fits_the_smallest_temperature_the_service_takes():
    """Every argmax right: the NLL falls as T falls, towards 0, which no job could label with."""
    logits, targets = _calibrated(2_000, seed=2)
    temperature = fit_temperature(logits, logits.argmax(dim=1))
    assert temperature == TEMPERATURE_MIN
