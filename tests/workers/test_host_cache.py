"""The worker host's cache stays under NST_WORKER_CACHE_GB: the least recently used entries go
first, never one in use, never the one just used; what killed writers left goes too."""

import os
import time

import pytest

from tests.utils.env import clear_caches
from workers import graph_cache, host_cache


@pytest.fixture
def budget(monkeypatch):
    def set_bytes(n: int) -> None:
        monkeypatch.setenv("NST_WORKER_CACHE_GB", str(n / 1e9))
        clear_caches()

    return set_bytes


def _checkpoint(name: str, size: int, used: float):
    path = host_cache.root() / "teachers" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"w" * size)
    os.utime(path, (used, used))
    return path


def _graph(name: str, size: int, used: float):
    folder = host_cache.root() / "graphs" / name
    folder.mkdir(parents=True)
    (folder / "model.xml").write_bytes(b"x" * (size // 2))
    (folder / "model.bin").write_bytes(b"b" * (size - size // 2))
    os.utime(folder, (used, used))
    return folder


def _present():
    """The entries left (lock files stay, empty, by design)."""
    folders = [host_cache.root() / kind for kind in ("teachers", "graphs")]
    return sorted(p.name for f in folders if f.is_dir() for p in f.iterdir() if p.suffix != ".lock")


def test_the_least_recently_used_go_first_until_the_cache_fits(budget):
    now = time.time()
    oldest = _checkpoint("a", 1000, now - 300)
    old_graph = _graph("g1", 1000, now - 200)
    newer = _checkpoint("b", 1000, now - 100)
    newest_graph = _graph("g2", 1000, now)
    budget(2500)
    assert host_cache.trim() == [oldest, old_graph]
    assert newer.is_file() and newest_graph.is_dir()
    budget(10_000)
    assert host_cache.trim() == []  # within the budget: nothing goes


def test_lock_files_and_a_writers_part_are_not_entries_and_a_killed_writers_part_goes(budget):
    now = time.time()
    kept = _checkpoint("a", 1000, now)
    (host_cache.root() / "graphs").mkdir(parents=True)
    (host_cache.root() / "graphs" / "h.lock").touch()
    killed = host_cache.root() / "teachers" / ".b.safetensors.0123.part"  # a fetch killed midway
    killed.write_bytes(b"w" * 5000)
    budget(1000)
    with host_cache.held(host_cache.root() / "graphs" / "g"):
        part = host_cache.root() / "graphs" / ".g.4567.part"  # this writer's, still writing
        part.mkdir()
        (part / "model.bin").write_bytes(b"b" * 5000)
        assert host_cache.trim() == [killed]
        assert kept.is_file() and part.is_dir()


def test_holding_an_entry_clears_its_killed_writers_parts(budget):
    entry = host_cache.root() / "teachers" / "c.safetensors"
    entry.parent.mkdir(parents=True)
    killed = entry.with_name(".c.safetensors.0123.part")
    killed.write_bytes(b"w" * 10)
    other = entry.with_name(".d.safetensors.0123.part")  # another entry's: trimming's business
    other.write_bytes(b"w" * 10)
    with host_cache.held(entry):
        assert not killed.exists() and other.exists()


def test_an_entry_in_use_stays_and_the_next_oldest_goes_instead(budget):
    now = time.time()
    in_use = _checkpoint("a", 1000, now - 300)
    idle = _checkpoint("b", 1000, now - 200)
    _checkpoint("c", 1000, now - 100)
    budget(2000)
    with host_cache.held(in_use):  # another process's reader holds the same kind of lock
        assert host_cache.trim() == [idle]
    assert in_use.is_file()


def test_using_an_entry_makes_it_the_most_recent_and_trims_around_it(budget):
    now = time.time()
    used_again = _checkpoint("a", 1000, now - 300)
    other = _checkpoint("b", 1000, now - 200)
    budget(1500)
    with host_cache.held(used_again):
        pass
    assert _present() == ["a.safetensors"] and not other.exists()
    assert used_again.stat().st_mtime > now - 5


def test_the_entry_just_made_stays_even_beyond_the_budget(budget):
    now = time.time()
    _checkpoint("a", 1000, now - 100)
    budget(10)
    graph = host_cache.root() / "graphs" / "big"
    made = graph_cache.cached(
        graph, lambda folder: (folder / "model.bin").write_bytes(b"b" * 500), lambda f: f
    )
    assert made == graph and _present() == ["big"]
