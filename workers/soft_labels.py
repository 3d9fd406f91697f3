"""Soft labels from a teacher's logits: the tempered distribution, its confidence and entropy,
stored as float16 bytes (every class, or the top-k with the mass of the rest)."""

from __future__ import annotations

import numpy as np
import torch


def soft_labels(logits: torch.Tensor, *, temperature: float, keep_all: bool, top_k: int) -> list[dict]:
    """Rows for the labels table from a batch of logits (float32 on the CPU)."""
    log_probs = torch.log_softmax(logits / temperature, dim=1)
    probs = log_probs.exp()
    confidence, predicted = probs.max(dim=1)
    entropy = -(probs * log_probs).sum(dim=1)
    if keep_all:
        stored, indices, rest = probs, None, None
    else:
        stored, indices = probs.topk(top_k, dim=1)
        rest = (1.0 - stored.sum(dim=1)).clamp_min(0.0)
    # Whole columns to Python at once: indexing a tensor per row cost more than the write.
    count = probs.shape[0]
    probs_bytes = [row.tobytes() for row in stored.numpy().astype(np.float16)]
    top = [None] * count if indices is None else [row.tobytes() for row in indices.numpy().astype(np.int32)]
    rest_mass = [None] * count if rest is None else rest.tolist()
    return [
        {"predicted": p, "confidence": c, "entropy": e, "probs": b, "top_indices": t, "rest_mass": r}
        for p, c, e, b, t, r in zip(
            predicted.tolist(),
            confidence.tolist(),
            entropy.tolist(),
            probs_bytes,
            top,
            rest_mass,
            strict=True,
        )
    ]
