"""Converted graphs on the host's disk: made once, by one process at a time, whole or not at all,
named by everything they are made from, and made again when damaged."""

import multiprocessing
import time
from pathlib import Path

import pytest

from workers import graph_cache


def _write(text: str, calls: list):
    def write(folder: Path) -> None:
        calls.append(folder)
        (folder / "graph.txt").write_text(text)

    return write


def _read(folder: Path) -> str:
    return (folder / "graph.txt").read_text()


def test_a_graph_is_written_once_and_read_after(tmp_path):
    folder, calls = tmp_path / "graphs" / "g", []
    assert graph_cache.cached(folder, _write("one", calls), _read) == "one"
    assert graph_cache.cached(folder, _write("two", calls), _read) == "one"
    assert len(calls) == 1 and calls[0] != folder  # written aside, then renamed into place
    assert sorted(p.name for p in folder.parent.iterdir()) == ["g", "g.lock"]


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "graphs" / "g"

    def broken(part: Path) -> None:
        (part / "graph.txt").write_text("half")
        raise RuntimeError("converter crashed")

    with pytest.raises(RuntimeError, match="converter crashed"):
        graph_cache.cached(folder, broken, _read)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["g.lock"]
    assert graph_cache.cached(folder, _write("whole", []), _read) == "whole"


def test_a_damaged_graph_is_made_again_and_a_dead_writers_part_removed(tmp_path, caplog):
    folder = tmp_path / "g"
    folder.mkdir()  # a graph without its file
    left = tmp_path / ".g.0123.part"  # a writer killed midway
    left.mkdir()
    calls = []
    assert graph_cache.cached(folder, _write("again", calls), _read) == "again"
    assert len(calls) == 1 and not left.exists()
    assert "cached graph g could not be read (FileNotFoundError" in caplog.text


def _slow_writer(folder: str, log: str) -> None:
    def write(part: Path) -> None:
        with open(log, "a") as handle:
            handle.write("wrote\n")
        time.sleep(0.5)
        (part / "graph.txt").write_text("made")

    assert graph_cache.cached(Path(folder), write, _read) == "made"


def test_processes_at_once_convert_once(tmp_path):
    folder, log = tmp_path / "g", tmp_path / "log"
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_slow_writer, args=(str(folder), str(log))) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    assert log.read_text() == "wrote\n"


def test_a_graph_is_named_by_its_parts_and_the_libraries_versions(monkeypatch):
    first = graph_cache.folder_for("openvino", "sha-a", (1, 28, 28), 64)
    assert first == graph_cache.folder_for("openvino", "sha-a", (1, 28, 28), 64)
    assert first.parent.name == "graphs" and first.parent.parent.name == "cache"
    others = {
        graph_cache.folder_for("openvino", "sha-b", (1, 28, 28), 64),
        graph_cache.folder_for("openvino", "sha-a", (1, 28, 28), 32),
        graph_cache.folder_for("openvino", "sha-a", (3, 28, 28), 64),
    }
    assert first not in others and len(others) == 3
    monkeypatch.setattr(graph_cache, "_version", lambda name: "9.9" if name == "openvino" else "1")
    assert graph_cache.folder_for("openvino", "sha-a", (1, 28, 28), 64) != first
