"""The API over an S3 store (moto's server): keys with characters a URL would misread, a store
that stops answering, and objects too large to hold in memory for a thumbnail."""

import io
import tracemalloc

import pytest
from PIL import Image

from nst import storage
from service.thumbnails import ThumbnailError, render
from tests.utils.env import clear_caches

pytest_plugins = ["tests.utils.s3"]

ODD_KEYS = ("a.png", "img#1.png", "what?.png")


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), value).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def roots(s3_server, monkeypatch):
    """The bucket's ``api/`` prefix as the only data root, read with a fresh file system."""
    monkeypatch.setenv("NST_DATA_ROOTS", s3_server.url("api"))
    clear_caches()
    storage._filesystems.clear()
    yield s3_server
    storage._filesystems.clear()  # none made for an unreachable endpoint outlives the test


def _put(s3_server, key: str, body: bytes) -> None:
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=f"api/{key}", Body=body)


def _items(client, dataset: dict) -> list[dict]:
    return client.get(f"/datasets/{dataset['id']}/items").json()["data"]


def test_keys_with_hash_or_question_mark_register_show_thumbnails_and_read_as_workers_do(client, roots):
    for value, key in enumerate(ODD_KEYS):
        _put(roots, f"odd/pool/{key}", _png(60 * value))
    _put(roots, "odd/list.txt", b"./pool/a.png\npool/img#1.png\n././pool/what?.png\n")
    by_prefix = client.post(
        "/datasets", json={"name": "p", "kind": "unlabeled", "path": roots.url("api/odd/pool")}
    )
    by_list = client.post(
        "/datasets", json={"name": "l", "kind": "unlabeled", "path": roots.url("api/odd/list.txt")}
    )
    for response in (by_prefix, by_list):
        assert response.status_code == 201, response.text
        items = _items(client, response.json())
        assert sorted(i["uri"] for i in items) == [roots.url(f"api/odd/pool/{k}") for k in ODD_KEYS]
        for item in items:
            thumbnail = client.get(f"/items/{item['id']}/thumbnail", params={"size": 64})
            assert thumbnail.status_code == 200, (item["uri"], thumbnail.text)
            assert Image.open(storage.openable(item["uri"])).size == (28, 28)  # a worker's read


def test_a_key_no_url_can_name_is_refused_at_registration_by_name(client, roots):
    _put(roots, "versioned/pool/a.png", _png(0))
    _put(roots, "versioned/pool/b?versionId=3.png", _png(0))
    response = client.post(
        "/datasets", json={"name": "v", "kind": "unlabeled", "path": roots.url("api/versioned/pool")}
    )
    assert response.status_code == 422 and "b?versionId=3.png" in response.json()["detail"], response.text
    _put(roots, "versioned/list.txt", b"pool/a.png\npool/b?versionId=3.png\n")
    response = client.post(
        "/datasets", json={"name": "v", "kind": "unlabeled", "path": roots.url("api/versioned/list.txt")}
    )
    assert response.status_code == 422 and "line 2" in response.json()["detail"], response.text


def test_a_store_that_does_not_answer_is_503_on_every_route(client, roots, teacher_file, monkeypatch):
    _put(roots, "outage/pool/a.png", _png(0))
    _put(roots, "outage/list.txt", b"pool/a.png\n")
    _put(roots, "outage/teacher.safetensors", teacher_file.read_bytes())
    monkeypatch.setenv("NST_ARTIFACT_DIR", roots.url("api/artifacts"))
    clear_caches()
    dataset = client.post(
        "/datasets", json={"name": "o", "kind": "unlabeled", "path": roots.url("api/outage/pool")}
    ).json()
    [item] = _items(client, dataset)
    with teacher_file.open("rb") as handle:
        teacher = client.post("/teachers/upload", files={"file": (teacher_file.name, handle)}).json()

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    storage._filesystems.clear()
    for path in ("api/outage/pool", "api/outage/list.txt"):
        response = client.post("/datasets", json={"name": "o", "kind": "unlabeled", "path": roots.url(path)})
        assert response.status_code == 503 and "storage unavailable" in response.json()["detail"], path
    response = client.post("/teachers", json={"path": roots.url("api/outage/teacher.safetensors")})
    assert response.status_code == 503 and response.json()["detail"].startswith("path: ")
    assert client.get(f"/items/{item['id']}/thumbnail").status_code == 503
    assert client.get(f"/teachers/{teacher['id']}/checkpoint").status_code == 503
    assert roots.secret not in response.text


def test_a_thumbnail_streams_a_large_object_instead_of_holding_it(roots):
    size = 32 << 20
    _put(roots, "big/huge.tif", b"II*\x00" + b"\x00" * size)
    url = roots.url("api/big/huge.tif")
    storage.info(url)  # the file system and its connections exist before the measure
    tracemalloc.start()
    try:
        with pytest.raises(ThumbnailError, match="not a readable image"):
            render(url, 64)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # moto, in this process, copies the whole object to answer each ranged GET; the reader holds
    # a block or two on top of that, never the object again.
    assert peak < size + (8 << 20), f"peak {peak >> 20} MiB"
