"""The resumable training state in one safetensors file: weights, EMA, optimizer, scheduler,
step, RNG, metrics and the full config. Tensors go in as tensors and everything else as JSON
metadata, so resuming never unpickles anything."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for index, values in optimizer.state_dict()["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, scalars


def save_state(
    path: Path,
    *,
    model: torch.nn.Module,
    ema: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler,
    step: int,
    config: dict,
    metrics: dict,
) -> Path:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    optim_tensors, optim_scalars = _optimizer_tensors(optimizer)
    tensors.update(optim_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    metadata = {
        "step": str(step),
        "config": json.dumps(config),
        "metrics": json.dumps(metrics),
        "scheduler": json.dumps(scheduler.state_dict()),
        "optim.param_groups": json.dumps(optimizer.state_dict()["param_groups"]),
        "optim.scalars": json.dumps(optim_scalars),
        # timm's crop and RandAugment draw from Python's and NumPy's RNGs; with them restored
        # (and decoding in the main process) a resumed run sees the images an unbroken one would.
        "rng.python": json.dumps(random.getstate()),
        "rng.numpy": json.dumps(_numpy_rng_state()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)  # a crash while saving leaves the previous state intact
    return path


def read_config(path: Path) -> dict:
    """The config a state was saved with, without reading its tensors."""
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["config"])


def load_state(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    groups = {
        prefix: {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        for prefix in ("model", "ema")
    }
    optim_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state.setdefault(int(index), {})[name] = value
    for key, value in json.loads(metadata["optim.scalars"]).items():
        index, name = key.split(".", 1)
        optim_state.setdefault(int(index), {})[name] = value
    return {
        "step": int(metadata["step"]),
        "config": json.loads(metadata["config"]),
        "metrics": json.loads(metadata["metrics"]),
        "scheduler": json.loads(metadata["scheduler"]),
        "model": groups["model"],
        "ema": groups["ema"] or None,
        "optimizer": {"state": optim_state, "param_groups": json.loads(metadata["optim.param_groups"])},
        "rng": tensors["rng.torch"],
        "rng_python": _python_rng(json.loads(metadata["rng.python"])),
        "rng_numpy": _numpy_rng(json.loads(metadata["rng.numpy"])),
    }


def _numpy_rng_state() -> list:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), pos, has_gauss, cached]


def _numpy_rng(state: list) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached


def _python_rng(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss
