import json
import os
import pickle
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from nst.checkpoint import save_teacher
from tests.utils.teacher import metadata

VALIDATE = "workers.tasks.validate_teacher"


def _root() -> Path:
    return Path(os.environ["NST_DATA_ROOTS"].split(",")[0])


def _upload(client, path: Path, meta: dict | None = None, name: str | None = None):
    data = {"metadata": json.dumps(meta)} if meta is not None else {}
    with path.open("rb") as handle:
        return client.post("/teachers/upload", files={"file": (name or path.name, handle)}, data=data)


def _stored_files() -> list[Path]:
    from nst.config import get_settings

    folder = get_settings().artifact_dir / "teachers"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_upload_registers_pending_teacher_and_enqueues_validation(client, teacher_file, enqueued):
    response = _upload(client, teacher_file)
    assert response.status_code == 201, response.text
    teacher = response.json()
    assert teacher["status"] == "pending"
    assert teacher["architecture"] == "resnet10t" and teacher["channels"] == 1
    assert len(teacher["id"]) == 64
    assert enqueued == [(VALIDATE, teacher["id"])]
    assert [p.name for p in _stored_files()] == [f"{teacher['id']}.safetensors"]


def test_same_file_twice_is_one_teacher(client, teacher_file, shared_root):
    first = _upload(client, teacher_file)
    second = client.post("/teachers", json={"path": str(teacher_file)})
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert client.get("/teachers").json()["count"] == 1


def test_request_metadata_overrides_embedded(client, teacher_file):
    response = _upload(client, teacher_file, metadata(name="mine", generation=2))
    assert response.status_code == 201
    assert response.json()["name"] == "mine" and response.json()["generation"] == 2


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl"])
def test_pickle_uploads_are_refused_with_conversion_hint(client, tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"w": torch.zeros(2)}, path)
    response = _upload(client, path)
    assert response.status_code == 422
    assert "nst teachers convert" in response.json()["detail"]
    assert _stored_files() == []


def test_pickle_bytes_under_a_safetensors_name_are_refused(client, tmp_path):
    path = tmp_path / "sneaky.safetensors"
    path.write_bytes(pickle.dumps({"w": [1, 2]}, protocol=4))
    response = _upload(client, path)
    assert response.status_code == 422 and "pickle" in response.json()["detail"]
    assert _stored_files() == []


def test_safetensors_whose_header_length_starts_with_pickles_opcode_is_accepted(client, tmp_path):
    """Found by bench/label_throughput.py: a header length of 128 modulo 256 puts 0x80 (pickle's
    PROTO opcode) first; one safetensors file in every 32 (headers are padded to 8 bytes)."""
    for pad in range(256):  # headers are padded to 8 bytes: 32 lengths modulo 256
        tensors = {"w" * (pad + 1): torch.zeros(2)}
        path = save_teacher(tensors, tmp_path / f"t{pad}.safetensors", metadata())
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length of 128 modulo 256")
    response = _upload(client, path)
    assert response.status_code == 201, response.text
    assert [p.name for p in _stored_files()] == [f"{response.json()['id']}.safetensors"]
    # The store sniffs the first bytes however the upload is chunked.
    from service.checkpoints import CheckpointError, file_chunks, store

    assert store(file_chunks(path, chunk_size=3), name=path.name, store_dir=tmp_path / "s")[2] > 0
    sneaky = tmp_path / "sneaky.safetensors"
    sneaky.write_bytes(pickle.dumps({"w": [1, 2]}, protocol=4))
    with pytest.raises(CheckpointError, match="pickle"):
        store(file_chunks(sneaky, chunk_size=3), name=sneaky.name, store_dir=tmp_path / "s")
    with pytest.raises(CheckpointError, match="'tiny.safetensors' looks like a pickle"):  # under 9 bytes
        store([b"\x80\x04\x95"], name="tiny.safetensors", store_dir=tmp_path / "s")
    assert list((tmp_path / "s").iterdir()) == [next((tmp_path / "s").glob("*.safetensors"))]


def test_garbage_file_is_refused_and_nothing_stored(client, tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    response = _upload(client, path)
    assert response.status_code == 422 and "not a safetensors file" in response.json()["detail"]
    assert _stored_files() == []
    assert client.get("/teachers").json()["count"] == 0


def test_missing_metadata_is_named(client, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    response = _upload(client, path)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("metadata: required")
    assert _stored_files() == []


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"mean": [0.1, 0.2]}, "mean"),
        ({"std": [0.0]}, "std"),
        ({"class_names": ["a", "a"]}, "class_names"),
        ({"image_size": 2}, "image_size"),
        ({"interpolation": "lanczos9"}, "interpolation"),
        ({"parent_id": "f" * 64}, "parent_id"),
    ],
)
def test_bad_metadata_names_the_field(client, teacher_file, override, field):
    response = _upload(client, teacher_file, metadata(**override))
    assert response.status_code == 422, response.text
    assert f"metadata.{field}" in json.dumps(response.json()["detail"]) or field in str(
        response.json()["detail"]
    )
    assert client.get("/teachers").json()["count"] == 0
    assert _stored_files() == []


def test_register_by_path_outside_roots_is_refused(client, tmp_path, teacher_file):
    outside = tmp_path / "t.safetensors"
    outside.write_bytes(teacher_file.read_bytes())
    response = client.post("/teachers", json={"path": str(outside)})
    assert response.status_code == 422 and "outside the data roots" in response.json()["detail"]


def test_lineage_must_name_a_known_parent(client, teacher_file, tmp_path):
    parent = _upload(client, teacher_file).json()
    child_file = save_teacher(
        {"w": torch.ones(3)}, _root() / "child.safetensors", metadata(parent_id=parent["id"], generation=1)
    )
    child = client.post("/teachers", json={"path": str(child_file)})
    assert child.status_code == 201, child.text
    assert child.json()["parent_id"] == parent["id"]
    conflict = client.delete(f"/teachers/{parent['id']}")
    assert conflict.status_code == 409 and "teacher" in conflict.json()["detail"]
    assert client.delete(f"/teachers/{child.json()['id']}").status_code == 204
    assert client.delete(f"/teachers/{parent['id']}").status_code == 204
    assert _stored_files() == []


def test_a_store_that_refuses_the_delete_leaves_an_orphan_file_not_a_500(client, teacher_file, monkeypatch):
    from nst import storage

    teacher = _upload(client, teacher_file).json()

    def refused(_where):
        raise storage.AccessDenied("s3://nst-test/teachers/x: access denied")

    monkeypatch.setattr(storage, "remove", refused)
    assert client.delete(f"/teachers/{teacher['id']}").status_code == 204
    assert client.get(f"/teachers/{teacher['id']}").status_code == 404


def _refuse_deletes(monkeypatch) -> None:
    """A write-once bucket policy: every delete is denied."""
    from nst import storage

    def refused(where):
        raise storage.AccessDenied(f"{where}: access denied")

    monkeypatch.setattr(storage, "remove", refused)


def test_two_concurrent_uploads_of_one_file_are_one_teacher_whose_file_stays(
    client, teacher_file, enqueued, monkeypatch
):
    """Both store the file and find no teacher before either inserts: the second insert loses on
    the unique key, answers with the first's teacher and leaves the file, now that teacher's."""
    from nst import storage

    both_stored = threading.Barrier(2, timeout=30)
    write_file = storage.write_file

    def write_then_wait(source, where):
        write_file(source, where)
        both_stored.wait()

    monkeypatch.setattr(storage, "write_file", write_then_wait)
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda _: _upload(client, teacher_file), range(2)))
    assert sorted(r.status_code for r in responses) == [200, 201], [r.text for r in responses]
    [teacher_id] = {r.json()["id"] for r in responses}
    assert client.get("/teachers").json()["count"] == 1
    assert enqueued == [(VALIDATE, teacher_id)]
    download = client.get(f"/teachers/{teacher_id}/checkpoint")
    assert download.status_code == 200 and download.content == teacher_file.read_bytes()


def test_a_re_upload_during_a_delete_never_leaves_a_teacher_without_its_file(
    client, teacher_file, monkeypatch
):
    """The same bytes uploaded again while a delete removes the file: the upload runs to its end
    just before the removal. Whichever comes first, a registered teacher has its file."""
    from nst import storage
    from service.core.db import session_scope
    from service.crud import teachers as crud

    teacher = _upload(client, teacher_file).json()
    remove = storage.remove
    re_upload: dict = {}

    def re_uploaded_first(where):
        thread = threading.Thread(target=lambda: re_upload.update(response=_upload(client, teacher_file)))
        thread.start()
        thread.join(timeout=5)  # on a database whose writer the delete holds, it waits for the commit
        re_upload["thread"] = thread
        remove(where)

    monkeypatch.setattr(storage, "remove", re_uploaded_first)
    assert client.delete(f"/teachers/{teacher['id']}").status_code == 204
    re_upload["thread"].join(timeout=30)
    assert re_upload["response"].status_code in (200, 201), re_upload["response"].text
    with session_scope() as session:
        registered = crud.is_registered(session, teacher["id"])
    download = client.get(f"/teachers/{teacher['id']}/checkpoint")
    if registered:
        assert download.status_code == 200 and download.content == teacher_file.read_bytes()
    else:
        assert download.status_code == 404


def test_an_upload_that_found_its_teacher_holds_it_against_a_delete_until_it_answers(
    backend, client, teacher_file, monkeypatch
):
    """A re-upload of a registered teacher whose file was lost puts the file back; a delete that
    arrives meanwhile waits for the upload's answer, then removes both. Never a 200 for a teacher
    a delete has already removed, nor a file left behind by it."""
    from nst import storage

    teacher = _upload(client, teacher_file).json()
    [stored] = _stored_files()
    stored.unlink()  # lost from the store
    write_file = storage.write_file
    delete: dict = {}

    def delete_meanwhile(source, where):
        thread = threading.Thread(
            target=lambda: delete.update(response=client.delete(f"/teachers/{teacher['id']}"))
        )
        thread.start()
        thread.join(timeout=2)  # held by the upload: it waits
        delete.update(thread=thread, ended_first=not thread.is_alive())
        write_file(source, where)

    monkeypatch.setattr(storage, "write_file", delete_meanwhile)
    again = _upload(client, teacher_file)
    delete["thread"].join(timeout=30)
    assert (again.status_code, delete["response"].status_code) == (200, 204), again.text
    assert not delete["ended_first"]
    assert _stored_files() == []  # nothing orphaned
    assert client.get(f"/teachers/{teacher['id']}").status_code == 404


def test_a_re_upload_puts_back_a_teacher_file_lost_from_the_store(client, teacher_file):
    teacher = _upload(client, teacher_file).json()
    [stored] = _stored_files()
    stored.unlink()
    assert client.get(f"/teachers/{teacher['id']}/checkpoint").status_code == 404
    assert _upload(client, teacher_file).status_code == 200
    download = client.get(f"/teachers/{teacher['id']}/checkpoint")
    assert download.status_code == 200 and download.content == teacher_file.read_bytes()


def test_a_refusal_on_a_store_that_refuses_deletes_is_its_own_422_and_stores_nothing(
    client, teacher_file, tmp_path, monkeypatch
):
    from safetensors.torch import save_file

    _refuse_deletes(monkeypatch)
    response = _upload(client, teacher_file, metadata(parent_id="f" * 64))
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("metadata.parent_id: unknown teacher")
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    response = _upload(client, bare)
    assert response.status_code == 422 and response.json()["detail"].startswith("metadata: required")
    assert _stored_files() == []


def test_a_failed_insert_keeps_its_own_error_when_the_cleanup_is_refused(
    client, teacher_file, monkeypatch, caplog
):
    def database_gone(*_args, **_kwargs):
        raise RuntimeError("the database went away")

    _refuse_deletes(monkeypatch)
    monkeypatch.setattr("service.crud.teachers.create_teacher", database_gone)
    with pytest.raises(RuntimeError, match="the database went away"):
        _upload(client, teacher_file)
    assert "not removed" in caplog.text and "access denied" in caplog.text


def test_a_stored_checkpoint_has_the_umasks_mode_not_mkstemps_0600(client, teacher_file):
    """Workers under another user on a shared volume read it with the group's or others' bits."""
    previous = os.umask(0o027)
    try:
        response = _upload(client, teacher_file)
    finally:
        os.umask(previous)
    assert response.status_code == 201, response.text
    [stored] = _stored_files()
    assert stat.S_IMODE(stored.stat().st_mode) == 0o640
