"""Bad inputs are a 4xx naming the field and the problem, never a 500, and leave nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from nst.checkpoint import save_teacher
from tests.utils import synthetic
from tests.utils.teacher import metadata

pytestmark = pytest.mark.usefixtures("backend")


def _root() -> Path:
    return Path(os.environ["NST_DATA_ROOTS"].split(",")[0])


def _stored(client) -> list[Path]:
    from nst.config import get_settings

    folder = get_settings().artifact_dir / "teachers"
    return sorted(folder.iterdir()) if folder.exists() else []


def _dataset(client, **fields):
    body = {"name": "pool", "kind": "unlabeled", "path": str(_root())} | fields
    return client.post("/datasets", json=body)


@pytest.mark.parametrize(
    ("raw", "field", "problem"),
    [
        (b'{"name": "a\\u0000b", "kind": "unlabeled", "path": "x"}', "name", "control character"),
        (b'{"name": "a\\ud800", "kind": "unlabeled", "path": "x"}', "name", "unicode"),
        (b'{"name": "a", "kind": "unlabeled", "path": "\\udc80"}', "path", "unicode"),
        (b'{"name": "a", "kind": "unlabeled", "path": "x\\u001b[2J"}', "path", "control character"),
    ],
)
def test_undecodable_or_control_characters_are_422_naming_the_field(client, raw, field, problem):
    response = client.post("/datasets", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", field] and problem in error["msg"]


@pytest.mark.parametrize(
    ("path", "problem"),
    [("~nosuchuser/pool", "cannot be resolved"), ("a" * 4000, "cannot be resolved|does not exist")],
)
def test_paths_the_os_refuses_are_422(client, path, problem):
    response = _dataset(client, path=path)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("path: ") and any(p in detail for p in problem.split("|"))
    assert len(detail) < 600  # the path is quoted cut short


@pytest.mark.parametrize(
    "url",
    [
        "/datasets/1541269483948082200576",
        "/jobs?offset=28941559765096828928",
        "/manifests?offset=9999999999999999999",
        "/items/99999999999999999999/thumbnail",
        "/jobs/1/stats?labeled_dataset_id=4294967296",
        "/datasets?kind=a%00b",
    ],
)
def test_integers_beyond_their_columns_and_unknown_choices_are_422(client, url):
    response = client.get(url)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] in ("path", "query")


def test_a_nul_byte_in_an_id_is_422(client):
    response = client.get("/teachers/%00")
    assert response.status_code == 422 and "control character" in response.json()["detail"][0]["msg"]


def test_a_422_does_not_echo_a_large_input(client):
    response = _dataset(client, name="n" * 100_000)
    assert response.status_code == 422
    assert len(response.content) < 1000, len(response.content)


def test_a_body_over_the_limit_is_413_naming_the_setting(client):
    response = _dataset(client, path="a" * (2 << 20))
    assert response.status_code == 413, response.text
    assert "NST_MAX_BODY_BYTES" in response.json()["detail"]


@pytest.mark.parametrize("key", ["checkpoint_path", "pretrained", "pretrained_cfg", "cache_dir", "file"])
def test_model_kwargs_that_could_name_a_file_are_refused(client, tmp_path, key):
    path = save_teacher({"w": torch.zeros(2)}, _root() / "t.safetensors", metadata())
    meta = metadata(model_kwargs={key: "/etc/shadow"})
    response = client.post("/teachers", json={"path": str(path), "metadata": meta})
    assert response.status_code == 422, response.text
    assert "metadata" in response.text and repr(key) in response.text and "not allowed" in response.text
    assert client.get("/teachers").json()["count"] == 0 and _stored(client) == []


@pytest.mark.parametrize(("field", "value"), [("image_size", 32.0), ("channels", "1"), ("mean", "0.5")])
def test_a_teacher_body_s_metadata_is_strict_too(client, field, value):
    path = save_teacher({"w": torch.zeros(2)}, _root() / "t.safetensors", metadata())
    response = client.post("/teachers", json={"path": str(path), "metadata": metadata(**{field: value})})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:3] == ["body", "metadata", field]
    assert client.get("/teachers").json()["count"] == 0 and _stored(client) == []


def test_safe_model_kwargs_are_kept(client):
    path = save_teacher({"w": torch.zeros(2)}, _root() / "t.safetensors", metadata())
    meta = metadata(model_kwargs={"drop_rate": 0.2, "global_pool": "avg"})
    response = client.post("/teachers", json={"path": str(path), "metadata": meta})
    assert response.status_code == 201, response.text
    assert response.json()["model_kwargs"] == {"drop_rate": 0.2, "global_pool": "avg"}


def test_a_worker_refuses_a_stored_row_whose_model_kwargs_name_a_file(client, tmp_path, monkeypatch):
    """Defence in depth: a row that bypassed the API still opens and unpickles nothing."""
    from service.core.db import session_scope
    from service.models import Teacher
    from workers.tasks import validate_teacher

    outside = tmp_path / "elsewhere.pth"
    torch.save({"w": torch.zeros(2)}, outside)
    opened = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a) or {})
    teacher_id = synthetic.teacher(["a", "b"])
    with session_scope() as session:
        row = session.get(Teacher, teacher_id)
        row.status, row.model_kwargs = "pending", {"checkpoint_path": str(outside)}
    validate_teacher(teacher_id)
    teacher = client.get(f"/teachers/{teacher_id}").json()
    assert teacher["status"] == "invalid" and "checkpoint_path" in teacher["status_reason"]
    assert opened == []


def test_an_upload_over_the_limit_is_413_and_leaves_nothing(client, monkeypatch, teacher_file):
    from service.main import create_app

    monkeypatch.setenv("NST_MAX_UPLOAD_BYTES", str(teacher_file.stat().st_size // 2))
    from fastapi.testclient import TestClient

    from tests.utils.env import clear_caches

    clear_caches()
    with TestClient(create_app()) as small, teacher_file.open("rb") as handle:
        response = small.post("/teachers/upload", files={"file": ("t.safetensors", handle)})
        assert response.status_code == 413, response.text
        assert "NST_MAX_UPLOAD_BYTES" in response.json()["detail"]
        assert small.get("/teachers").json()["count"] == 0
    assert _stored(client) == []


# Starlette's form parser leaves its spooled copy of a part cut short to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_cut_off_upload_leaves_no_file_and_no_row(client, teacher_file):
    boundary = "cutoff"
    whole = teacher_file.read_bytes()
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.safetensors"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + whole[: len(whole) // 2]  # the connection ends mid-file: no closing boundary
    response = client.post(
        "/teachers/upload",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert 400 <= response.status_code < 500, response.text
    assert client.get("/teachers").json()["count"] == 0
    assert _stored(client) == []


def test_a_checkpoint_error_names_the_upload_not_the_temporary_file(client):
    bad = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......"
    response = client.post("/teachers/upload", files={"file": ("mine.safetensors", bad)})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "'mine.safetensors'" in detail and ".upload-" not in detail
    assert json.loads(response.content)  # valid JSON
