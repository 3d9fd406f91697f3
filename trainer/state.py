"""The resumable training state in one safetensors file: weights, EMA, optimizer, scheduler,
step, every rank's RNG, metrics and the full config. Tensors go in as tensors and everything else
as JSON metadata, so resuming never unpickles anything."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nst.atomic import replacing


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
    rng: list[dict],
) -> Path:
    """``rng``: every rank's ``rng_state()``, in rank order."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    optim_tensors, optim_scalars = _optimizer_tensors(optimizer)
    tensors.update(optim_tensors)
    for rank, state in enumerate(rng):
        tensors[f"rng.{rank}.torch"] = state["torch"]
        tensors.update({f"rng.{rank}.cuda.{i}": cuda for i, cuda in enumerate(state["cuda"])})
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
        "rng.ranks": str(len(rng)),
        "rng.python": json.dumps([state["python"] for state in rng]),
        "rng.numpy": json.dumps([state["numpy"] for state in rng]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as part:  # a crash while saving leaves the previous state intact
        save_file(tensors, str(part), metadata=metadata)
    return path


def rng_state() -> dict:
    """This process's random state: torch's (and CUDA's, when in use), Python's and NumPy's."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "python": random.getstate(),
        "numpy": _numpy_rng_state(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        # Only the devices this machine has: a process uses its own one.
        for device, cuda in zip(range(torch.cuda.device_count()), state["cuda"], strict=False):
            torch.cuda.set_rng_state(cuda, device)
    random.setstate(_python_rng(state["python"]))
    np.random.set_state(_numpy_rng(state["numpy"]))


def read_config(path: Path) -> dict:
    """The config a state was saved with, without reading its tensors."""
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["config"])


def read_step(path: Path) -> int:
    """The steps a state had trained, without reading its tensors."""
    with safe_open(str(path), framework="pt") as handle:
        return int(handle.metadata()["step"])


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
        "rng": _rng_states(metadata, tensors),
    }


def _rng_states(metadata: dict, tensors: dict) -> list[dict]:
    """Every saved rank's RNG state, in rank order; a state saved before they were kept per rank
    holds rank 0's only."""
    pythons, numpys = json.loads(metadata["rng.python"]), json.loads(metadata["rng.numpy"])
    if "rng.ranks" not in metadata:
        return [{"torch": tensors["rng.torch"], "cuda": [], "python": pythons, "numpy": numpys}]
    return [
        {
            "torch": tensors[f"rng.{rank}.torch"],
            "cuda": _cuda_states(tensors, rank),
            "python": pythons[rank],
            "numpy": numpys[rank],
        }
        for rank in range(int(metadata["rng.ranks"]))
    ]


def _cuda_states(tensors: dict, rank: int) -> list[torch.Tensor]:
    prefix = f"rng.{rank}.cuda."
    devices = sorted(int(key[len(prefix) :]) for key in tensors if key.startswith(prefix))
    return [tensors[f"{prefix}{device}"] for device in devices]


def _numpy_rng_state() -> list:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), pos, has_gauss, cached]


def _numpy_rng(state: list) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached


def _python_rng(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss
