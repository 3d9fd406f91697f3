"""Shared fixtures: real images, a real timm teacher, the API in-process, the stack in processes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from cli import fashion_mnist
from tests.utils.env import clear_caches
from tests.utils.teacher import train_tiny_teacher


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory):
    """A data root shared by the whole session, for files that are costly to write."""
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="session")
def fmnist(shared_root):
    """Real Fashion-MNIST PNGs: 20 labeled per class, 300 unlabeled, 100 test."""
    images, labels = fashion_mnist.load("train")
    labeled, pool = fashion_mnist.split_indices(labels, per_class=20, unlabeled=300, seed=0)
    out = shared_root / "fmnist"
    fashion_mnist.write_image_folder(out / "labeled", images, labels, labeled)
    fashion_mnist.write_unlabeled(out / "unlabeled", images, labels, pool)
    test_images, test_labels = fashion_mnist.load("t10k")
    fashion_mnist.write_image_folder(out / "test", test_images, test_labels, range(100))
    return out


@pytest.fixture(scope="session")
def teacher_file(fmnist):
    """A resnet10t trained for a few steps on the labeled images, as a safetensors teacher."""
    return train_tiny_teacher(fmnist / "labeled", fmnist.parent / "teachers" / "tiny.safetensors")


@pytest.fixture
def enqueued(monkeypatch):
    """Replace the broker with a list: API tests see what would have been enqueued."""
    sent: list[tuple[str, object]] = []
    monkeypatch.setattr("service.queue._send", lambda name, arg: sent.append((name, arg)))
    return sent


@pytest.fixture
def client(enqueued):
    from service.main import create_app

    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request, monkeypatch):
    """Run the test on the embedded SQLite database and on the local PostgreSQL server."""
    if request.param == "postgres":
        monkeypatch.setenv("NST_DATABASE_URL", request.getfixturevalue("pg_url"))
        clear_caches()
    return request.param
