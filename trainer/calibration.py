"""Calibration of a classifier's confidences: expected calibration error over equal-width bins,
the reliability diagram, and temperature scaling (Guo et al. 2017) fitted on held-out logits."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from nst.targets import TEMPERATURE_MAX, TEMPERATURE_MIN

BINS = 15


def reliability(
    logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0, bins: int = BINS
) -> dict:
    """Per equal-width confidence bin: count, mean confidence and accuracy; and the ECE, the
    count-weighted mean gap between the two."""
    probs = (logits / temperature).softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == targets).double()
    # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 cannot occur
    index = (confidence.double() * bins).ceil().long().clamp(1, bins) - 1
    count = torch.bincount(index, minlength=bins)
    conf_sum = torch.bincount(index, weights=confidence.double(), minlength=bins)
    right_sum = torch.bincount(index, weights=correct, minlength=bins)
    filled = count > 0
    mean_conf = torch.where(filled, conf_sum / count.clamp(min=1), torch.nan)
    accuracy = torch.where(filled, right_sum / count.clamp(min=1), torch.nan)
    ece = float(((conf_sum - right_sum).abs().sum()) / max(len(targets), 1))
    return {
        "ece": ece,
        "temperature": temperature,
        "bins": [
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "count": int(count[b]),
                "confidence": float(mean_conf[b]) if filled[b] else None,
                "accuracy": float(accuracy[b]) if filled[b] else None,
            }
            for b in range(bins)
        ],
    }


def nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(logits.double() / temperature, targets))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, *, max_iter: int = 100) -> float:
    """The T that minimises the NLL of softmax(logits / T), by L-BFGS on log T, within the
    service's [0.01, 100]: a val split the teacher gets all right drives T towards 0."""
    logits = logits.double()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    fitted = float(log_t.detach().exp())
    if not math.isfinite(fitted):
        raise ValueError(f"the temperature fit diverged (T = {fitted}); the logits hold no usable signal")
    return min(max(fitted, TEMPERATURE_MIN), TEMPERATURE_MAX)


def plot_reliability(diagrams: list[dict], path: Path, title: str) -> None:
    """Accuracy against confidence per bin, one bar series per diagram (e.g. T = 1 and fitted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for offset, diagram in enumerate(diagrams):
        filled = [b for b in diagram["bins"] if b["count"]]
        width = 1 / len(diagram["bins"]) / len(diagrams)
        ax.bar(
            [b["low"] + width * offset for b in filled],
            [b["accuracy"] for b in filled],
            width=width,
            align="edge",
            alpha=0.7,
            label=f"T = {diagram['temperature']:.3g}: ECE {diagram['ece']:.4f}",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
