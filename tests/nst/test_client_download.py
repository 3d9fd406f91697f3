"""Downloads (label and manifest exports, teacher checkpoints) land whole or not at all: an
error answer, a body cut off mid-stream or a checkpoint that fails its digest leaves the target
path as it was and nothing half-written beside it, and an error is asked for once."""

import hashlib

import httpx
import pytest

from nst.client import Client, NotFound

BODY = b"0123456789" * 1000


class _CutOff(httpx.SyncByteStream):
    """The first chunk of the body, then the connection drops."""

    def __iter__(self):
        yield BODY[:4096]
        raise httpx.ReadError("connection reset")


def _client(handler, calls: list[str]) -> Client:
    def record(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return handler(request)

    return Client("http://nst.test", transport=httpx.MockTransport(record))


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "downloads"  # tmp_path also holds the suite's own service roots
    path.mkdir()
    return path


def _left_in(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_download_writes_the_whole_body(folder):
    calls: list[str] = []
    with _client(lambda r: httpx.Response(200, content=BODY), calls) as client:
        out = client.export_labels(7, folder / "labels.parquet")
    assert out.read_bytes() == BODY
    assert _left_in(folder) == ["labels.parquet"]


def test_an_error_is_raised_from_the_one_request_and_writes_nothing(folder):
    calls: list[str] = []
    (folder / "labels.parquet").write_bytes(b"an earlier export")
    answer = httpx.Response(404, json={"detail": "job 7 not found"})
    with _client(lambda r: answer, calls) as client, pytest.raises(NotFound, match="job 7 not found"):
        client.export_labels(7, folder / "labels.parquet")
    assert calls == ["/jobs/7/labels"]
    assert (folder / "labels.parquet").read_bytes() == b"an earlier export"
    assert _left_in(folder) == ["labels.parquet"]


def test_a_body_cut_off_mid_stream_leaves_no_partial_file(folder):
    calls: list[str] = []
    (folder / "m.jsonl").write_bytes(b"an earlier export")
    with (
        _client(lambda r: httpx.Response(200, stream=_CutOff()), calls) as client,
        pytest.raises(httpx.ReadError),
    ):
        client.export_manifest("m" * 64, folder / "m.jsonl", fmt="jsonl")
    assert (folder / "m.jsonl").read_bytes() == b"an earlier export"
    assert _left_in(folder) == ["m.jsonl"]


def test_a_checkpoint_is_kept_only_when_its_digest_is_its_id(folder):
    calls: list[str] = []
    good = hashlib.sha256(BODY).hexdigest()
    with _client(lambda r: httpx.Response(200, content=BODY), calls) as client:
        assert client.download_teacher(good, folder / "t.safetensors").read_bytes() == BODY
        with pytest.raises(ValueError, match="sha256"):
            client.download_teacher("f" * 64, folder / "other.safetensors")
    assert _left_in(folder) == ["t.safetensors"]


def test_a_symlinked_target_gets_the_file_it_names_and_a_pipe_is_written_directly(folder):
    import os
    import threading

    calls: list[str] = []
    (folder / "real.jsonl").write_bytes(b"an earlier export")
    (folder / "link.jsonl").symlink_to(folder / "real.jsonl")
    os.mkfifo(folder / "pipe")
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append((folder / "pipe").read_bytes()))
    reader.start()
    with _client(lambda r: httpx.Response(200, content=BODY), calls) as client:
        client.export_labels(7, folder / "link.jsonl", fmt="jsonl")
        client.export_labels(7, folder / "pipe", fmt="jsonl")
    reader.join(timeout=10)
    assert (folder / "link.jsonl").is_symlink() and (folder / "real.jsonl").read_bytes() == BODY
    assert received == [BODY]
    assert _left_in(folder) == ["link.jsonl", "pipe", "real.jsonl"]
