"""Train a noisy student from a manifest pulled over HTTP (docs/METHOD.md step 5).

``train`` reads top to bottom: ``_setup`` (seeds, data, model, optimizer, resume), ``_loop``
(one plain loop), ``_finish`` (evaluate, write the checkpoint, register it as a teacher). The
trainer knows the service only through its HTTP API (``nst.client``).
"""

from __future__ import annotations

import dataclasses
import json
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
from trainer.config import Recipe, RecipeError, Runtime, TrainConfig
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
from trainer.state import load_state, read_config, read_step, rng_state, save_state, set_rng_state


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


def _over_ranks(value: int, proc: Process, op=dist.ReduceOp.SUM) -> int:
    """``value`` reduced over every rank (its sum by default); itself in a one-process run."""
    reduced = torch.tensor([value], device=proc.device)
    if proc.world > 1:
        dist.all_reduce(reduced, op=op)
    return int(reduced.item())


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
    """Endless (labeled batch, pseudo batch) pairs; either may be None when its split is empty,
    the pseudo one also when the recipe's pseudo ratio is 0 (its loader is then never made)."""
    recipe = cfg.recipe
    noisy = train_transform(recipe, noisy=recipe.randaugment)
    streams = []
    for stream, (split, size) in enumerate(
        [(labeled, recipe.batch_size), (pseudo, recipe.pseudo_batch_size)]
    ):
        if len(split) and size:
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
        per_step += recipe.pseudo_batch_size * bool(len(self.pseudo))  # 0 when the ratio is 0
        return (self.step - self.start_step) * per_step * self.proc.world

    def checkpoint(self) -> None:
        """Save the state on rank 0, with every rank's RNG: called on every rank."""
        rng = _gather(rng_state(), self.proc)
        if not self.proc.main:
            return
        save_state(
            self.state_path,
            model=self.model,
            ema=self.ema.module if self.ema else None,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            step=self.step,
            config=self.cfg.to_dict(),
            metrics=self.metrics,
            rng=rng,
        )


def _gather(value, proc: Process) -> list:
    """Every rank's ``value``, in rank order."""
    if proc.world == 1:
        return [value]
    values = [None] * proc.world
    dist.all_gather_object(values, value)
    return values


def train(cfg: TrainConfig, client: Client | None = None) -> dict:
    """Train, evaluate and (on rank 0) write and register the student; return a summary."""
    cfg.check()
    if cfg.runtime.resume:
        check_resumable(cfg)  # before any request
    if client is None:
        with Client(cfg.service.api_url, token=cfg.service.api_token) as own_client:
            return train(cfg, own_client)
    run = _setup(cfg, client)
    seconds = _loop(run)
    return _finish(run, seconds)


def _setup(cfg: TrainConfig, client: Client) -> _Run:
    """Pull the manifest, build the model, optimizer, schedule and EMA, seed, resume if asked."""
    recipe, proc = cfg.recipe, init_process()
    # Each rank pulls only its own share of the entries.
    manifest, labeled, pseudo = fetch_manifest(
        client, cfg.service.manifest_id, part=proc.rank, parts=proc.world
    )
    check_entries(manifest, _over_ranks(len(labeled) + len(pseudo), proc))
    recipe, source = normalisation.resolve(recipe, client, manifest)
    cfg = dataclasses.replace(cfg, recipe=recipe)
    if proc.main:
        print(f"[nst train] normalisation mean {recipe.mean} std {recipe.std}, from {source}", flush=True)
    classes = manifest["classes"]
    if not len(labeled) and not len(pseudo):
        raise ValueError(f"manifest {cfg.service.manifest_id} has no entries")
    if not recipe.pseudo_batch_size:
        _check_labeled_only(labeled, cfg, proc)
    if cfg.runtime.resume:
        check_resumable(cfg)  # again: the normalisation is now resolved

    model, ema = _student(recipe, len(classes), proc)
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
        run.step, run.metrics = _restore(run.state_path, model, ema, optimizer, proc)
        run.start_step = run.step
    return run


def _student(recipe: Recipe, num_classes: int, proc: Process) -> tuple[torch.nn.Module, ModelEmaV3 | None]:
    """The student and its EMA, with the same initial weights on every rank; then each rank's
    own noise (``_seed_noise``)."""
    torch.manual_seed(recipe.seed)
    model = build_model(recipe, num_classes).to(proc.device)
    if proc.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    # ModelEmaV3 after .to(device) and before DDP, as timm's train script does.
    ema = ModelEmaV3(model, decay=recipe.ema_decay, use_warmup=True) if recipe.ema_decay else None
    _seed_noise(recipe.seed, proc.rank)
    return model, ema


def _seed_noise(seed: int, rank: int) -> None:
    """Each rank its own dropout and drop-path masks (torch, CUDA included) and crops and
    RandAugment operations (timm draws them from Python's and NumPy's RNGs): with one seed for
    all, every rank would noise its images alike. Rank 0 goes on with the torch stream that
    built the model, as a one-process run always has, so its results stay reproducible."""
    rank_seed = seed * 100 + rank  # within NumPy's 32 bits for seeds up to config.MAX_SEED
    if rank:
        torch.manual_seed(rank_seed)
    random.seed(rank_seed)
    np.random.seed(rank_seed)


def _check_labeled_only(labeled: Split, cfg: TrainConfig, proc: Process) -> None:
    """A pseudo ratio of 0 trains on the labeled entries only: there must be some."""
    # The fewest of any rank: a rank without any would wait for the rest forever.
    if not _over_ranks(len(labeled), proc, dist.ReduceOp.MIN):
        problem = (
            f"0 trains on the labeled entries only, and manifest {cfg.service.manifest_id} has none "
            f"in some rank's share (of {proc.world})"
        )
        raise RecipeError("pseudo_ratio", problem)


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
        if runtime.checkpoint_every and run.step % runtime.checkpoint_every == 0:
            run.checkpoint()
    bar.close()
    return time.perf_counter() - started


def _finish(run: _Run, seconds: float) -> dict:
    """Fine-tune the resolution if asked, evaluate, and on rank 0 write and register the student."""
    cfg, proc = run.cfg, run.proc
    final, recipe = run.ema.module if run.ema is not None else run.model, cfg.recipe
    if recipe.finetune_steps and proc.main and len(run.labeled):
        workers = cfg.runtime.workers
        # The student now takes the new size; the state keeps the training recipe, which a
        # resumed run must match.
        final, recipe = finetune_resolution(final, run.labeled, recipe, proc.device, workers=workers)
    if run.eval_split is not None and proc.main:
        run.metrics = _evaluate(final, run.eval_split, recipe, run, None)
    result = {
        "steps": run.step,
        "seconds": round(seconds, 2),
        "metrics": run.metrics,
        "images_per_s": round(run.images_trained / max(seconds, 1e-9), 1),
    }
    run.checkpoint()
    if proc.main:
        published = dataclasses.replace(cfg, recipe=recipe)
        result.update(_publish(final, published, run.classes, run.metrics, run.client))
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
    """The training state to resume was made from another manifest, or with other settings."""


# What a resumed run may change: how it is carried out and where its results go. Anything else
# would make it neither the saved run nor the one asked for (the optimizer, EMA, sampler and RNG
# states are the saved run's). ``steps`` is compared on its own (``_steps_change``).
_MAY_CHANGE = {f.name for f in dataclasses.fields(Runtime)} | {
    "api_url",
    "api_token",
    "eval_dataset_id",
    "register",
    "steps",
}


def check_resumable(cfg: TrainConfig) -> None:
    """Refuse to resume a saved state with another manifest or recipe. ``steps`` may change, to no
    fewer than the steps already trained: the learning-rate schedule is then the new count's
    (cosine over ``steps``), from the saved step on."""
    path = Path(cfg.runtime.out_dir) / "state.safetensors"
    if not path.exists():
        return
    saved = _flat(read_config(path))
    manifest_id = cfg.service.manifest_id
    if saved.get("manifest_id", manifest_id) != manifest_id:
        raise ResumeMismatch(
            f"{path} holds training on manifest {saved['manifest_id']}, not {manifest_id}: resuming it "
            "would mix two training sets; choose another out_dir, or train without --resume"
        )
    changes = _setting_changes(saved, _flat(cfg.to_dict())) + _steps_change(path, cfg.recipe.steps)
    if changes:
        raise ResumeMismatch(
            f"{path} holds a run trained with other settings ({'; '.join(changes)}); resume it with "
            "its own (only --steps, and runtime settings such as --workers or --out-dir, may "
            "change), choose another out_dir, or train without --resume"
        )


def _flat(config: dict) -> dict:
    """One value per field name, from a saved config in parts or flat (older checkpoints), JSON's
    way (tuples as lists): what a saved file would hold."""
    parts = TrainConfig.parts()
    if parts.keys() & config.keys():
        config = {name: value for part in parts if part in config for name, value in config[part].items()}
    return json.loads(json.dumps(config))


def _setting_changes(saved: dict, current: dict) -> list[str]:
    """'field: saved -> current' for every setting that differs and may not; a setting the saved
    file does not hold (written by an older version) is not compared, nor a normalisation not yet
    resolved (None: it will resolve as it did)."""
    return [
        f"{name}: {saved[name]!r} -> {value!r}"
        for name, value in current.items()
        if name not in _MAY_CHANGE
        and name in saved
        and not (name in ("mean", "std") and value is None)
        and _comparable(name, saved[name]) != _comparable(name, value)
    ]


def _comparable(name: str, value):
    if name == "pretrained_path" and value:  # the same file, named from another directory
        return str(Path(value).resolve())
    return value


def _steps_change(path: Path, steps: int) -> list[str]:
    trained = read_step(path)
    if steps < trained:
        return [f"steps: {steps} is fewer than the {trained} already trained"]
    return []


def _restore(path: Path, model, ema, optimizer, proc: Process) -> tuple[int, dict]:
    """The saved weights, EMA, optimizer and this rank's RNG; the scheduler is not restored but
    rebuilt from the recipe (it holds nothing else), so a changed ``steps`` takes effect."""
    state = load_state(path)
    model.load_state_dict(state["model"])
    if ema is not None and state["ema"] is not None:
        ema.module.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    # A rank the state has no RNG for (the run now has more processes) keeps its fresh seed; its
    # share of the manifest has changed anyway.
    if proc.rank < len(state["rng"]):
        set_rng_state(state["rng"][proc.rank])
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
