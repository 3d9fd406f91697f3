from __future__ import annotations

import os

# No test may wait on a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from tests.utils.env import clear_caches, postgres_database

pytest_plugins = ["tests.utils.fixtures"]


@pytest.fixture(autouse=True)
def _fresh_settings(tmp_path, monkeypatch, shared_root):
    """Every test gets its own data folder, embedded database and embedded broker."""
    for key in list(os.environ):
        if key.startswith("NST_"):
            monkeypatch.delenv(key)
    data_dir = tmp_path / "nst"
    roots = tmp_path / "roots"
    roots.mkdir()
    monkeypatch.setenv("NST_DATA_DIR", str(data_dir))
    monkeypatch.setenv("NST_DATA_ROOTS", f"{roots},{shared_root}")
    monkeypatch.setenv("NST_ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")  # TestClient's and the stacks'
    # Each test's teachers are new to its data folder: preparing every one ahead of a job that may
    # never come, in another mode or batch, doubled the labeling tests' time. Its own tests set it.
    monkeypatch.setenv("NST_PREPARE_TEACHERS", "false")
    clear_caches()
    yield
    clear_caches()


@pytest.fixture
def pg_url():
    with postgres_database() as url:
        yield url
