"""Resuming only the run that was saved, a pseudo ratio of 0, and every rank its own noise: a
tiny student trained for a few steps on a synthetic manifest from the in-process API, its
images made in memory."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from tests.utils import synthetic
from tests.utils.transport import in_process_client
from trainer import train as train_module
from trainer.config import TrainConfig
from trainer.state import load_state, rng_state, save_state, set_rng_state

CLASSES = ["cat", "dog", "eel"]


@pytest.fixture
def manifest(client):
    teacher = synthetic.teacher(CLASSES)
    labeled = synthetic.labeled_dataset(CLASSES, [0, 1, 2, 0, 1, 2, 0, 1])
    labels = [(i % 3, 0.9) for i in range(12)]
    job = synthetic.finished_job(teacher, labels)
    body = {"labeled_dataset_ids": [labeled], "job_ids": [job.id], "balance": False}
    return client.post("/manifests", json=body).json()


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Every image URI the trainer reads; each a small grey PNG made from its name."""
    uris: list[str] = []

    def openable(uri: str):
        uris.append(uri)
        pixels = np.random.default_rng(zlib.crc32(uri.encode())).integers(0, 255, (28, 28), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels, "L").save(out, format="PNG")
        out.seek(0)
        return out

    monkeypatch.setattr("trainer.data.storage.openable", openable)
    return uris


@pytest.fixture
def nst(client, opened):
    with in_process_client(client) as nst_client:
        yield nst_client


def _cfg(manifest, tmp_path, **overrides) -> TrainConfig:
    values = dict(
        manifest_id=manifest["id"],
        out_dir=str(tmp_path / "run"),
        architecture="resnet10t",
        mean=[0.5],
        std=[0.25],
        steps=3,
        batch_size=2,
        pseudo_ratio=2,
        warmup_steps=1,
        workers=0,
        progress=False,
        checkpoint_every=0,
        register=False,
    )
    return TrainConfig.from_flat(values | overrides)


class _NoRequests:
    """A client for runs that must be refused before they ask the service anything."""

    def __getattr__(self, name):
        raise AssertionError(f"the run asked the service ({name}) before refusing")


@pytest.fixture
def learning_rates(monkeypatch) -> list[tuple[int, float]]:
    """(step, learning rate) for every step the trainer takes."""
    seen: list[tuple[int, float]] = []
    real_setup, real_step = train_module._setup, train_module._step
    runs = []

    def setup(cfg, client):
        runs.append(real_setup(cfg, client))
        return runs[-1]

    def step(*args, **kwargs):
        run = runs[-1]
        seen.append((run.step, run.optimizer.param_groups[0]["lr"]))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "_setup", setup)
    monkeypatch.setattr(train_module, "_step", step)
    return seen


def test_a_resume_with_other_settings_is_refused_naming_them_before_any_request(manifest, nst, tmp_path):
    train_module.train(_cfg(manifest, tmp_path), nst)
    student = tmp_path / "run" / "student.safetensors"
    written = student.stat().st_mtime_ns
    changed = dict(lr=1e-2, batch_size=4, architecture="resnet14t", dropout=0.1, seed=3)
    with pytest.raises(train_module.ResumeMismatch) as refused:
        train_module.train(_cfg(manifest, tmp_path, resume=True, **changed), _NoRequests())
    message = str(refused.value)
    for named in ("lr: 0.002 -> 0.01", "batch_size: 2 -> 4", "architecture: 'resnet10t' -> 'resnet14t'"):
        assert named in message
    assert "dropout: 0.5 -> 0.1" in message and "seed: 0 -> 3" in message
    assert student.stat().st_mtime_ns == written  # the old weights are not published again
    # Only runtime settings changed: resumed (already finished, so nothing more trained).
    again = train_module.train(_cfg(manifest, tmp_path, resume=True, workers=1, checkpoint_every=5), nst)
    assert again["steps"] == 3


def test_a_resume_may_not_fall_below_the_steps_trained(manifest, nst, tmp_path):
    train_module.train(_cfg(manifest, tmp_path), nst)
    with pytest.raises(train_module.ResumeMismatch, match="steps: 2 is fewer than the 3 already trained"):
        train_module.train(_cfg(manifest, tmp_path, resume=True, steps=2), _NoRequests())


def test_a_resume_with_more_steps_follows_the_new_schedule(manifest, nst, tmp_path, learning_rates):
    train_module.train(_cfg(manifest, tmp_path / "short"), nst)
    learning_rates.clear()
    resumed = train_module.train(_cfg(manifest, tmp_path / "short", resume=True, steps=6), nst)
    assert resumed["steps"] == 6
    continued = list(learning_rates)
    learning_rates.clear()
    train_module.train(_cfg(manifest, tmp_path / "long", steps=6), nst)
    assert [step for step, _ in continued] == [step for step, _ in learning_rates[3:]] == [3, 4, 5]
    lrs = [lr for _, lr in continued]
    assert lrs == pytest.approx([lr for _, lr in learning_rates[3:]])  # not the short run's minimum
    assert len(set(lrs)) == 3


def test_a_pseudo_ratio_of_0_trains_on_the_labeled_entries_only(manifest, nst, opened, tmp_path, monkeypatch):
    batches = []
    real_step = train_module._step

    def step(net, x_l, y_l, x_u, y_u, *args):
        batches.append((x_l is not None, x_u is not None))
        return real_step(net, x_l, y_l, x_u, y_u, *args)

    monkeypatch.setattr(train_module, "_step", step)
    result = train_module.train(_cfg(manifest, tmp_path, pseudo_ratio=0), nst)
    assert batches == [(True, False)] * 3
    assert all("/pool/" not in uri for uri in opened)  # no pseudo-labeled image is even decoded
    assert result["images_per_s"] > 0


def test_ranks_start_from_the_same_weights_but_draw_their_own_noise(manifest, nst, tmp_path, monkeypatch):
    entries = manifest["totals"]["entries"]  # what both ranks' shares would sum to
    monkeypatch.setattr(train_module, "_over_ranks", lambda value, proc, op=None: entries)
    weights, noise, saved = [], [], []
    for rank in (0, 1):
        process = train_module.Process(rank, 2, torch.device("cpu"))
        monkeypatch.setattr(train_module, "init_process", lambda process=process: process)
        run = train_module._setup(_cfg(manifest, tmp_path), nst)
        weights.append(run.model.state_dict())
        saved.append(rng_state())
        noise.append(torch.nn.functional.dropout(torch.ones(1000), 0.5))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(noise[0], noise[1])
    assert saved[0]["python"] != saved[1]["python"] and saved[0]["numpy"] != saved[1]["numpy"]


def test_every_ranks_rng_is_saved_and_restored_cuda_included(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ranks = []
    for rank in (0, 1):
        train_module._seed_noise(5, rank)
        ranks.append(rng_state() | {"cuda": [torch.full((16,), rank, dtype=torch.uint8)]})
    path = tmp_path / "state.safetensors"
    common = dict(model=model, ema=None, optimizer=optimizer, step=1, config={}, metrics={})
    save_state(path, scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1), rng=ranks, **common)
    loaded = load_state(path)["rng"]
    assert len(loaded) == 2 and [state["cuda"][0][0].item() for state in loaded] == [0, 1]

    cuda_set = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: cuda_set.append((state, device)))
    set_rng_state(loaded[1])
    assert torch.equal(torch.get_rng_state(), ranks[1]["torch"])
    assert np.random.get_state()[1].tolist() == ranks[1]["numpy"][1]
    assert len(cuda_set) == 1 and cuda_set[0][1] == 0 and cuda_set[0][0][0].item() == 1
