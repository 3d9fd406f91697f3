"""Train a noisy student from a manifest pulled over HTTP (docs/METHOD.md step 5).

Reads top to bottom: set up, one plain loop, evaluate, write the checkpoint, register it as a
teacher. The trainer knows the service only through its HTTP API (``nst.client``).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from nst.checkpoint import save_teacher
from nst.client import Client
from trainer.config import TrainConfig
from trainer.data import (
    EndlessSampler,
    ImageTargets,
    Split,
    eval_transform,
    fetch_eval_split,
    fetch_manifest,
    train_transform,
)
from trainer.evaluate import evaluate
from trainer.finetune import finetune_resolution
from trainer.state import load_state, save_state


@dataclass
class Runtime:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_runtime() -> Runtime:
    """One process, or one of ``torchrun``'s (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Runtime(rank, world, device)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a distribution: mean over the batch of -sum(q * log p)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def pseudo_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if targets.ndim == 2:
        return soft_cross_entropy(logits, targets)
    return F.cross_entropy(logits, targets)


def build_model(cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    model = timm.create_model(
        cfg.architecture,
        pretrained=False,
        num_classes=num_classes,
        in_chans=cfg.channels,
        drop_rate=cfg.dropout,
        drop_path_rate=cfg.drop_path or None,
    )
    if cfg.pretrained_path:
        _load_matching(model, Path(cfg.pretrained_path))
    return model


def _load_matching(model: torch.nn.Module, path: Path) -> None:
    """Start from another checkpoint: every tensor whose name and shape match (a new class
    count leaves the classifier freshly initialised)."""
    own = model.state_dict()
    given = {k: v for k, v in load_file(str(path)).items() if k in own and own[k].shape == v.shape}
    if not given:
        raise ValueError(f"{path} shares no tensors with {type(model).__name__}")
    model.load_state_dict(given, strict=False)


def _loader(
    split: Split, transform, cfg: TrainConfig, rt: Runtime, batch_size: int, stream: int, start: int
) -> DataLoader:
    sampler = EndlessSampler(
        split.copies, seed=cfg.seed * 1000 + stream, rank=rt.rank, world=rt.world, start=start
    )
    # Its own generator: creating the loader draws nothing from the global RNG, which a
    # resumed run restores and must find as the unbroken run left it.
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + stream * 100 + rt.rank + start)
    return DataLoader(
        ImageTargets(split, transform, _mode(cfg)),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        drop_last=True,
        pin_memory=rt.device.type == "cuda",
        persistent_workers=cfg.workers > 0,
        generator=generator,
    )


def _mode(cfg: TrainConfig) -> str:
    return "L" if cfg.channels == 1 else "RGB"


def _batches(labeled: Split, pseudo: Split, cfg: TrainConfig, rt: Runtime, start_step: int):
    """Endless (labeled batch, pseudo batch) pairs; either may be None when its split is empty."""
    noisy = train_transform(cfg, noisy=cfg.randaugment)
    streams = []
    for stream, (split, size) in enumerate([(labeled, cfg.batch_size), (pseudo, cfg.pseudo_batch_size)]):
        if len(split):
            loader = _loader(split, noisy, cfg, rt, size, stream, start=start_step * size)
            streams.append(iter(loader))
        else:
            streams.append(None)
    while True:
        yield tuple(next(s) if s is not None else None for s in streams)


def train(cfg: TrainConfig, client: Client | None = None) -> dict:
    """Train, evaluate and (on rank 0) write and register the student; return a summary."""
    if client is None:
        with Client(cfg.api_url, token=cfg.api_token) as own_client:
            return train(cfg, own_client)
    rt = init_runtime()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed * 100 + rt.rank)
    np.random.seed(cfg.seed * 100 + rt.rank)  # timm's RandAugment picks its operations with it
    manifest, labeled, pseudo = fetch_manifest(client, cfg.manifest_id)
    classes = manifest["classes"]
    if not len(labeled) and not len(pseudo):
        raise ValueError(f"manifest {cfg.manifest_id} has no entries")
    out_dir = Path(cfg.out_dir)
    state_path = out_dir / "state.safetensors"

    model = build_model(cfg, len(classes)).to(rt.device)
    if rt.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=cfg.steps,
        warmup_epochs=cfg.warmup_steps,
        warmup_lr=cfg.lr * 0.01,
        min_lr=cfg.lr * 0.01,
    )
    # ModelEmaV3 after .to(device) and before DDP, as timm's train script does.
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True) if cfg.ema_decay else None
    step, metrics = 0, {}
    if cfg.resume and state_path.exists():
        step, metrics = _restore(state_path, model, ema, optimizer, scheduler)
    net = DistributedDataParallel(model) if rt.world > 1 else model
    checkpoint = partial(
        save_state,
        state_path,
        model=model,
        ema=ema.module if ema else None,
        optimizer=optimizer,
        scheduler=scheduler,
    )

    use_amp = cfg.amp and rt.device.type == "cuda"
    batches = _batches(labeled, pseudo, cfg, rt, start_step=step)
    images_per_step = (cfg.batch_size if len(labeled) else 0) + (cfg.pseudo_batch_size if len(pseudo) else 0)
    eval_split = (
        fetch_eval_split(client, cfg.eval_dataset_id, classes) if cfg.eval_dataset_id is not None else None
    )
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        desc=f"train {cfg.architecture}",
        unit="step",
        disable=not (cfg.progress and rt.main),
        dynamic_ncols=True,
    )
    started, first_step = time.perf_counter(), step
    net.train()
    while step < cfg.steps:
        scheduler.step(step)
        (x_l, y_l), (x_u, y_u) = (b if b is not None else (None, None) for b in next(batches))
        loss, parts = _step(net, x_l, y_l, x_u, y_u, cfg, rt, use_amp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if ema is not None:
            ema.update(model, step=step)
        rate = (step - first_step) * images_per_step * rt.world / (time.perf_counter() - started)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", **parts, img_s=f"{rate:.0f}")
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}")
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps and eval_split and rt.main:
            metrics = _evaluate(ema.module if ema else model, eval_split, cfg, rt, step, bar)
            net.train()
        if rt.main and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            checkpoint(step=step, config=cfg.to_dict(), metrics=metrics)
    bar.close()
    seconds = time.perf_counter() - started

    final = ema.module if ema is not None else model
    if cfg.finetune_steps and rt.main and len(labeled):
        final, cfg = finetune_resolution(final, labeled, cfg, rt.device)
    if eval_split is not None and rt.main:
        metrics = _evaluate(final, eval_split, cfg, rt, step, None)
    result = {
        "steps": step,
        "seconds": round(seconds, 2),
        "metrics": metrics,
        "images_per_s": round((step - first_step) * images_per_step * rt.world / max(seconds, 1e-9), 1),
    }
    if rt.main:
        checkpoint(step=step, config=cfg.to_dict(), metrics=metrics)
        result.update(_publish(final, cfg, classes, metrics, client, out_dir))
    if rt.world > 1:
        dist.barrier()
    return result


def _step(net, x_l, y_l, x_u, y_u, cfg: TrainConfig, rt: Runtime, use_amp: bool):
    """One forward over labeled and pseudo-labeled images together (shared BN statistics)."""
    inputs = torch.cat([x for x in (x_l, x_u) if x is not None]).to(rt.device, non_blocking=True)
    if rt.device.type == "cuda":
        inputs = inputs.to(memory_format=torch.channels_last)
    with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=use_amp):
        logits = net(inputs).float()
    n_l = 0 if x_l is None else len(x_l)
    loss, parts = torch.zeros((), device=rt.device), {}
    if x_l is not None:
        labeled_loss = F.cross_entropy(logits[:n_l], y_l.to(rt.device), label_smoothing=cfg.label_smoothing)
        loss, parts["l"] = loss + labeled_loss, f"{labeled_loss.item():.3f}"
    if x_u is not None:
        unlabeled_loss = pseudo_loss(logits[n_l:], y_u.to(rt.device))
        loss, parts["u"] = loss + unlabeled_loss, f"{unlabeled_loss.item():.3f}"
    return loss, parts


def _evaluate(model, split: Split, cfg: TrainConfig, rt: Runtime, step: int, bar) -> dict:
    metrics = evaluate(model, split, eval_transform(cfg), _mode(cfg), rt.device, num_workers=cfg.workers)
    metrics["step"] = step
    if bar is not None:
        bar.write(f"step {step}: top1 {metrics['top1']:.4f} top5 {metrics['top5']:.4f}")
    return metrics


def _restore(path: Path, model, ema, optimizer, scheduler) -> tuple[int, dict]:
    state = load_state(path)
    model.load_state_dict(state["model"])
    if ema is not None and state["ema"] is not None:
        ema.module.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    random.setstate(state["rng_python"])
    np.random.set_state(state["rng_numpy"])
    return state["step"], state["metrics"]


def _publish(
    model, cfg: TrainConfig, classes: list[str], metrics: dict, client: Client, out_dir: Path
) -> dict:
    """Write the student as a teacher checkpoint and register it, with its lineage."""
    metadata = {
        "name": cfg.name or f"{cfg.architecture}-gen{cfg.generation}",
        "architecture": cfg.architecture,
        "class_names": classes,
        "image_size": cfg.image_size,
        "channels": cfg.channels,
        "mean": cfg.mean,
        "std": cfg.std,
        "interpolation": cfg.interpolation,
        "crop_pct": cfg.crop_pct,
        "parent_id": cfg.parent_id,
        "manifest_id": cfg.manifest_id,
        "generation": cfg.generation,
        "metrics": _jsonable(metrics),
    }
    path = save_teacher(model.state_dict(), out_dir / "student.safetensors", metadata)
    published = {"checkpoint": str(path)}
    if cfg.register:
        teacher = client.upload_teacher(path)
        published["teacher_id"] = client.wait_for_teacher(teacher["id"])["id"]
    return published


def _jsonable(metrics: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in metrics.items()}
