"""Every file the client and trainer write is whole or not there: a write whose flush to disk
fails leaves the previous file as it was and nothing beside it."""

from __future__ import annotations

import os

import httpx
import pytest
import torch
from click.testing import CliRunner

from nst import atomic
from nst.checkpoint import save_teacher
from nst.client import Client
from trainer.state import rng_state, save_state


@pytest.fixture
def failing_flush(monkeypatch):
    """os.fsync fails, as on a full or failing disk."""

    def fsync(_fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


def _only(path, content: bytes) -> None:
    """``path`` holds ``content``, and its folder nothing else (no temporary file left)."""
    assert path.read_bytes() == content
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_replaced_file_is_flushed_and_whole(folder):
    path = folder / "out.bin"
    path.write_bytes(b"old")
    assert atomic.write_bytes(path, b"new") == path
    _only(path, b"new")
    with pytest.raises(FileNotFoundError, match="folder .* does not exist"):
        atomic.write_bytes(folder / "missing" / "out.bin", b"new")


def test_a_teacher_checkpoint(folder, failing_flush):
    path = folder / "student.safetensors"
    path.write_bytes(b"old")
    metadata = {"architecture": "resnet10t", "class_names": ["a", "b"], "image_size": 28, "channels": 1}
    with pytest.raises(OSError, match="Input/output error"):
        save_teacher({"w": torch.ones(2)}, path, metadata | {"mean": [0.5], "std": [0.25]})
    _only(path, b"old")


def test_a_stats_chart(folder, failing_flush):
    path = folder / "chart.png"
    path.write_bytes(b"old")
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"new chart"))
    with Client("http://nst.test", transport=transport) as client, pytest.raises(OSError):
        client.job_stats_chart(1, path)
    _only(path, b"old")


def test_a_training_state(folder, failing_flush):
    path = folder / "state.safetensors"
    path.write_bytes(b"old")
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    with pytest.raises(OSError):
        save_state(
            path,
            model=model,
            ema=None,
            optimizer=optimizer,
            scheduler=scheduler,
            step=1,
            config={},
            metrics={},
            rng=[rng_state()],
        )
    _only(path, b"old")


def test_the_result_of_nst_evaluate(folder, monkeypatch, failing_flush):
    from cli.main import cli
    from tests.utils.fake_service import PrefixService

    result = {"classes": ["a"], "count": 1, "top1": 1.0, "top5": 1.0, "per_class": {"a": 1.0}}
    monkeypatch.setattr("trainer.cli.Client", PrefixService)
    monkeypatch.setattr("trainer.evaluate.evaluate_teacher", lambda *_a, **_k: result | {"calibration": []})
    out = folder / "eval.json"
    out.write_bytes(b"old")
    args = ["evaluate", "--teacher", "t", "--dataset", "1", "--device", "cpu", "--out", str(out)]
    invoked = CliRunner().invoke(cli, args)
    assert isinstance(invoked.exception, OSError), invoked.output
    _only(out, b"old")
