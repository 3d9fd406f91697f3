"""Train a noisy student from a manifest pulled over HTTP (docs/METHOD.md step 5).

``train`` reads top to bottom: ``_setup`` (seeds, data, model, optimizer, resume), ``_loop``
(one plain loop), ``_finish`` (evaluate, write the checkpoint, register it as a teacher). The
trainer knows the service only through its HTTP API (``nst.client``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
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
from nst.teacher_metadata import TeacherMetadata
from nst.transforms import eval_transform
from trainer import normalisation
from trainer.config import Recipe, TrainConfig
from trainer.data import (
    EndlessSampler,
    ImageTargets,
    Split,
    check_entries,
    fetch_eval_split,
    fetch_manifest,
    train_transform,
)
from trainer.evaluate import evaluate
from trainer.finetune import finetune_resolution
from trainer.state import load_state, read_config, save_state


@dataclass
class Process:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_process() -> Process:
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
    return Process(rank, world, device)


def _sum_over_ranks(value: int, proc: Process) -> int:
    total = torch.tensor([value], device=proc.device)
    if proc.world > 1:
        dist.all_reduce(total)
    return int(total.item())


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a distribution: mean over the batch of -sum(q * log p)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def pseudo_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if targets.ndim == 2:
        return soft_cross_entropy(logits, targets)
    return F.cross_entropy(logits, targets)


def build_model(recipe: Recipe, num_classes: int) -> torch.nn.Module:
    model = timm.create_model(
        recipe.architecture,
        pretrained=False,
        num_classes=num_classes,
        in_chans=recipe.channels,
        drop_rate=recipe.dropout,
        drop_path_rate=recipe.drop_path or None,
    )
    if recipe.pretrained_path:
        _load_matching(model, Path(recipe.pretrained_path))
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
    split: Split, transform, cfg: TrainConfig, proc: Process, batch_size: int, stream: int, start: int
) -> DataLoader:
    seed, workers = cfg.recipe.seed, cfg.runtime.workers
    sampler = EndlessSampler(split.copies, seed=seed * 1000 + stream, start=start)
    # Its own generator: creating the loader draws nothing from the global RNG, which a
    # resumed run restores and must find as the unbroken run left it.
    generator = torch.Generator().manual_seed(seed * 1000 + stream * 100 + proc.rank + start)
    return DataLoader(
        ImageTargets(split, transform, cfg.recipe.mode),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        pin_memory=proc.device.type == "cuda",
        persistent_workers=workers > 0,
        generator=generator,
    )


def _batches(labeled: Split, pseudo: Split, cfg: TrainConfig, proc: Process, start_step: int):
    """Endless (labeled batch, pseudo batch) pairs; either may be None when its split is empty."""
    recipe = cfg.recipe
    noisy = train_transform(recipe, noisy=recipe.randaugment)
    streams = []
    for stream, (split, size) in enumerate(
        [(labeled, recipe.batch_size), (pseudo, recipe.pseudo_batch_size)]
    ):
        if len(split):
            loader = _loader(split, noisy, cfg, proc, size, stream, start=start_step * size)
            streams.append(iter(loader))
        else:
            streams.append(None)
    while True:
        yield tuple(next(s) if s is not None else None for s in streams)


@dataclass
class _Run:
    """Everything the loop and the finish share, made by ``_setup``."""

    cfg: TrainConfig
    proc: Process
    client: Client
    classes: list[str]
    labeled: Split
    pseudo: Split
    eval_split: Split | None
    model: torch.nn.Module
    ema: ModelEmaV3 | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    state_path: Path
    step: int = 0
    start_step: int = 0  # where this process began: a resumed run counts its own speed
    metrics: dict = field(default_factory=dict)

    @property
    def images_trained(self) -> int:
        """Images this process's run has trained on, over all ranks."""
        recipe = self.cfg.recipe
        per_step = recipe.batch_size * bool(len(self.labeled))
        per_step += recipe.pseudo_batch_size * bool(len(self.pseudo))
        return (self.step - self.start_step) * per_step * self.proc.world

    def checkpoint(self) -> None:
        save_state(
            self.state_path,
            model=self.model,
            ema=self.ema.module if self.ema else None,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            step=self.step,
            config=self.cfg.to_dict(),
            metrics=self.metrics,
        )


def train(cfg: TrainConfig, client: Client | None = None) -> dict:
    """Train, evaluate and (on rank 0) write and register the student; return a summary."""
    cfg.recipe.check()
    if client is None:
        with Client(cfg.service.api_url, token=cfg.service.api_token) as own_client:
            return train(cfg, own_client)
    run = _setup(cfg, client)
    seconds = _loop(run)
    return _finish(run, seconds)


def _setup(cfg: TrainConfig, client: Client) -> _Run:
    """Seed, pull the manifest, build the model, optimizer, schedule and EMA, resume if asked."""
    recipe, proc = cfg.recipe, init_process()
    torch.manual_seed(recipe.seed)
    random.seed(recipe.seed * 100 + proc.rank)
    np.random.seed(recipe.seed * 100 + proc.rank)  # timm's RandAugment picks its operations with it
    # Each rank pulls only its own share of the entries.
    manifest, labeled, pseudo = fetch_manifest(
        client, cfg.service.manifest_id, part=proc.rank, parts=proc.world
    )
    check_entries(manifest, _sum_over_ranks(len(labeled) + len(pseudo), proc))
    recipe, source = normalisation.resolve(recipe, client, manifest)
    cfg = dataclasses.replace(cfg, recipe=recipe)
    if proc.main:
        print(f"[nst train] normalisation mean {recipe.mean} std {recipe.std}, from {source}", flush=True)
    classes = manifest["classes"]
    if not len(labeled) and not len(pseudo):
        raise ValueError(f"manifest {cfg.service.manifest_id} has no entries")

    model = build_model(recipe, len(classes)).to(proc.device)
    if proc.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(
        model, opt=recipe.optimizer, lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=recipe.steps,
        warmup_epochs=recipe.warmup_steps,
        warmup_lr=recipe.lr * 0.01,
        min_lr=recipe.lr * 0.01,
    )
    # ModelEmaV3 after .to(device) and before DDP, as timm's train script does.
    ema = ModelEmaV3(model, decay=recipe.ema_decay, use_warmup=True) if recipe.ema_decay else None
    eval_id = cfg.service.eval_dataset_id
    run = _Run(
        cfg=cfg,
        proc=proc,
        client=client,
        classes=classes,
        labeled=labeled,
        pseudo=pseudo,
        eval_split=fetch_eval_split(client, eval_id, classes) if eval_id is not None else None,
        model=model,
        ema=ema,
        optimizer=optimizer,
        scheduler=scheduler,
        state_path=Path(cfg.runtime.out_dir) / "state.safetensors",
    )
    if cfg.runtime.resume and run.state_path.exists():
        _check_same_manifest(run.state_path, cfg.service.manifest_id)
        run.step, run.metrics = _restore(run.state_path, model, ema, optimizer, scheduler)
        run.start_step = run.step
    return run


def _loop(run: _Run) -> float:
    """Step to the recipe's steps, evaluating and checkpointing as the runtime asks; return the
    seconds it took."""
    cfg, proc, model, ema = run.cfg, run.proc, run.model, run.ema
    steps, runtime = cfg.recipe.steps, cfg.runtime
    net = DistributedDataParallel(model) if proc.world > 1 else model
    use_amp = runtime.amp and proc.device.type == "cuda"
    batches = _batches(run.labeled, run.pseudo, cfg, proc, start_step=run.step)
    bar = tqdm(
        total=steps,
        initial=run.step,
        desc=f"train {cfg.recipe.architecture}",
        unit="step",
        disable=not (runtime.progress and proc.main),
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    net.train()
    while run.step < steps:
        run.scheduler.step(run.step)
        (x_l, y_l), (x_u, y_u) = (b if b is not None else (None, None) for b in next(batches))
        loss, parts = _step(net, x_l, y_l, x_u, y_u, cfg, proc, use_amp)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.step += 1
        if ema is not None:
            ema.update(model, step=run.step)
        bar.update(1)
        rate = run.images_trained / (time.perf_counter() - started)
        bar.set_postfix(loss=f"{loss.item():.3f}", **parts, img_s=f"{rate:.0f}")
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at step {run.step}")
        due = runtime.eval_every and run.step % runtime.eval_every == 0 and run.step < steps
        if due and run.eval_split and proc.main:
            run.metrics = _evaluate(ema.module if ema else model, run.eval_split, cfg.recipe, run, bar)
            net.train()
        if proc.main and runtime.checkpoint_every and run.step % runtime.checkpoint_every == 0:
            run.checkpoint()
    bar.close()
    return time.perf_counter() - started


def _finish(run: _Run, seconds: float) -> dict:
    """Fine-tune the resolution if asked, evaluate, and on rank 0 write and register the student."""
    cfg, proc = run.cfg, run.proc
    final = run.ema.module if run.ema is not None else run.model
    if cfg.recipe.finetune_steps and proc.main and len(run.labeled):
        workers = cfg.runtime.workers
        final, recipe = finetune_resolution(final, run.labeled, cfg.recipe, proc.device, workers=workers)
        run.cfg = cfg = dataclasses.replace(cfg, recipe=recipe)  # the student now takes this size
    if run.eval_split is not None and proc.main:
        run.metrics = _evaluate(final, run.eval_split, cfg.recipe, run, None)
    result = {
        "steps": run.step,
        "seconds": round(seconds, 2),
        "metrics": run.metrics,
        "images_per_s": round(run.images_trained / max(seconds, 1e-9), 1),
    }
    if proc.main:
        run.checkpoint()
        result.update(_publish(final, cfg, run.classes, run.metrics, run.client))
    if proc.world > 1:
        dist.barrier()
    return result


def _step(net, x_l, y_l, x_u, y_u, cfg: TrainConfig, proc: Process, use_amp: bool):
    """One forward over labeled and pseudo-labeled images together (shared BN statistics)."""
    inputs = torch.cat([x for x in (x_l, x_u) if x is not None]).to(proc.device, non_blocking=True)
    if proc.device.type == "cuda":
        inputs = inputs.to(memory_format=torch.channels_last)
    with torch.autocast(proc.device.type, dtype=torch.bfloat16, enabled=use_amp):
        logits = net(inputs).float()
    n_l = 0 if x_l is None else len(x_l)
    loss, parts = torch.zeros((), device=proc.device), {}
    if x_l is not None:
        labeled_loss = F.cross_entropy(
            logits[:n_l], y_l.to(proc.device), label_smoothing=cfg.recipe.label_smoothing
        )
        loss, parts["l"] = loss + labeled_loss, f"{labeled_loss.item():.3f}"
    if x_u is not None:
        unlabeled_loss = pseudo_loss(logits[n_l:], y_u.to(proc.device))
        loss, parts["u"] = loss + unlabeled_loss, f"{unlabeled_loss.item():.3f}"
    return loss, parts


def _evaluate(model, split: Split, recipe: Recipe, run: _Run, bar) -> dict:
    transform = eval_transform(**recipe.image_format)
    workers = run.cfg.runtime.workers
    metrics = evaluate(model, split, transform, recipe.mode, run.proc.device, num_workers=workers)
    metrics["step"] = run.step
    if bar is not None:
        bar.write(f"step {run.step}: top1 {metrics['top1']:.4f} top5 {metrics['top5']:.4f}")
    return metrics


class ResumeMismatch(ValueError):
    """The training state to resume was made from another manifest."""


def _check_same_manifest(path: Path, manifest_id: str) -> None:
    saved = TrainConfig.from_dict(read_config(path)).service.manifest_id
    if saved != manifest_id:
        raise ResumeMismatch(
            f"{path} holds training on manifest {saved}, not {manifest_id}: resuming it would mix two "
            "training sets; choose another out_dir, or train without --resume"
        )


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


def _publish(model, cfg: TrainConfig, classes: list[str], metrics: dict, client: Client) -> dict:
    """Write the student as a teacher checkpoint and register it, with its lineage."""
    recipe, lineage = cfg.recipe, cfg.lineage
    metadata = TeacherMetadata(
        name=lineage.name or f"{recipe.architecture}-gen{lineage.generation}",
        architecture=recipe.architecture,
        class_names=classes,
        **recipe.image_format,
        parent_id=lineage.parent_id,
        manifest_id=cfg.service.manifest_id,
        generation=lineage.generation,
        metrics=_jsonable(metrics),
    )
    path = save_teacher(model.state_dict(), Path(cfg.runtime.out_dir) / "student.safetensors", metadata)
    published = {"checkpoint": str(path)}
    if cfg.service.register:
        teacher = client.upload_teacher(path)
        published["teacher_id"] = client.wait_for_teacher(teacher["id"])["id"]
    return published


def _jsonable(metrics: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in metrics.items()}
