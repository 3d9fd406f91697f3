"""Nothing shared on disk: images and checkpoints in a real S3 API (moto's server), workers whose
data roots hold only the bucket and whose data folders differ, and no credential anywhere it
could be read back."""

import sqlite3

import pytest

from cli.fashion_mnist import CLASSES
from nst import storage
from tests.utils.env import clear_caches
from tests.utils.stack import Stack
from trainer import train as train_module
from trainer.config import TrainConfig

pytest_plugins = ["tests.utils.s3"]

PER_CLASS, POOL = 2, 24


@pytest.fixture(scope="module")
def bucket(s3_server, fmnist):
    """Two labeled images per class and a pool of 24 unlabeled ones, under s3://nst-test/fmnist."""
    client = s3_server.client()
    for name in CLASSES:
        for path in sorted((fmnist / "labeled" / name).glob("*.png"))[:PER_CLASS]:
            client.upload_file(str(path), s3_server.bucket, f"fmnist/labeled/{name}/{path.name}")
    for path in sorted((fmnist / "unlabeled").rglob("*.png"))[:POOL]:
        client.upload_file(str(path), s3_server.bucket, f"fmnist/pool/{path.name}")
    return s3_server


def _use_bucket(monkeypatch, s3_server) -> None:
    monkeypatch.setenv("NST_DATA_ROOTS", s3_server.url("fmnist"))
    clear_caches()


def test_registration_refuses_what_the_store_cannot_give_with_a_clear_422(client, bucket, monkeypatch):
    _use_bucket(monkeypatch, bucket)
    cases = {
        "s3://nst-missing/fmnist/pool": "outside the data roots",
        bucket.url("fmnist/nothing-here"): "names no object",
        bucket.url("fmnist/pool/../labeled"): "'..'",
        "s3://key:pw@nst-test/fmnist/pool": "carries credentials",
    }
    for path, says in cases.items():
        response = client.post("/datasets", json={"name": "x", "kind": "unlabeled", "path": path})
        assert response.status_code == 422 and says in response.json()["detail"], (path, response.text)
        assert "pw@" not in response.text and bucket.secret not in response.text
    missing_entry = bucket.url("fmnist/list.txt")
    bucket.client().put_object(Bucket=bucket.bucket, Key="fmnist/list.txt", Body=b"pool/gone.png\n")
    response = client.post("/datasets", json={"name": "x", "kind": "unlabeled", "path": missing_entry})
    assert response.status_code == 422 and "line 1: file 'pool/gone.png' does not exist" in response.text
    teacher = client.post("/teachers", json={"path": bucket.url("fmnist/teacher.safetensors")})
    assert teacher.status_code == 422 and "does not exist" in teacher.json()["detail"]

    monkeypatch.setenv("NST_DATA_ROOTS", f"{bucket.url('fmnist')},s3://nst-missing")
    clear_caches()
    response = client.post("/datasets", json={"name": "x", "kind": "unlabeled", "path": "s3://nst-missing/a"})
    assert response.status_code == 422 and "does not exist" in response.json()["detail"]

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-" + "y" * 27)
    storage._filesystems.clear()
    try:
        response = client.post(
            "/datasets", json={"name": "x", "kind": "unlabeled", "path": bucket.url("fmnist")}
        )
    finally:
        storage._filesystems.clear()
    assert response.status_code == 422 and "access denied" in response.json()["detail"]
    assert "wrong-secret" not in response.text


def test_a_bucket_dataset_registers_measures_and_shows_thumbnails(client, bucket, monkeypatch):
    _use_bucket(monkeypatch, bucket)
    response = client.post(
        "/datasets",
        json={
            "name": "l",
            "kind": "labeled",
            "split": "train",
            "path": bucket.url("fmnist/labeled"),
            "classes": CLASSES,
        },
    )
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["item_count"] == PER_CLASS * len(CLASSES) and dataset["classes"] == CLASSES
    assert dataset["pixel_stats"]["sample"] == PER_CLASS * len(CLASSES)
    items = client.get(f"/datasets/{dataset['id']}/items").json()["data"]
    assert items[0]["uri"].startswith(bucket.url("fmnist/labeled/"))
    thumbnail = client.get(f"/items/{items[0]['id']}/thumbnail", params={"size": 64})
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    again = client.get(
        f"/items/{items[0]['id']}/thumbnail",
        params={"size": 64},
        headers={"If-None-Match": thumbnail.headers["etag"]},
    )
    assert again.status_code == 304


@pytest.mark.slow
def test_label_train_and_label_again_with_nothing_shared_on_disk(bucket, teacher_file, tmp_path):
    shared = tmp_path / "service"  # the API's and the database's; no worker reads a file here
    env = {
        "NST_DATA_DIR": str(shared),
        "NST_DATABASE_URL": f"sqlite:///{shared / 'nst.db'}",
        "NST_BROKER_URL": f"sqla+sqlite:///{shared / 'broker.db'}",
        "NST_DATA_ROOTS": bucket.url(),
        "NST_ARTIFACT_DIR": bucket.url("artifacts"),
        "NST_DECODE_WORKERS": "1",
    }
    shared.mkdir()
    stack = Stack(tmp_path / "logs", env)
    try:
        client = stack.start_api()
        first = stack.start_worker(NST_DATA_DIR=str(tmp_path / "host1"))
        teacher = client.upload_teacher(teacher_file)
        assert storage.list_files(bucket.url("artifacts/teachers")) == [
            bucket.url(f"artifacts/teachers/{teacher['id']}.safetensors")
        ]
        labeled = client.register_dataset(
            name="labeled", kind="labeled", split="train", path=bucket.url("fmnist/labeled"), classes=CLASSES
        )
        pool = client.register_dataset(name="pool", kind="unlabeled", path=bucket.url("fmnist/pool"))
        gone = sorted(storage.list_files(bucket.url("fmnist/pool")))[0]
        bucket.client().delete_object(Bucket=bucket.bucket, Key=gone.split("/", 3)[3])
        client.wait_for_teacher(teacher["id"], timeout=120)
        job = client.wait_for_job(
            client.create_job(teacher_id=teacher["id"], dataset_id=pool["id"])["id"], timeout=120
        )
        assert (job["state"], job["items_failed"]) == ("succeeded", 1), stack.logs()
        [error] = list(client.item_errors(job["id"]))
        assert error["uri"] == gone and "does not exist" in error["message"]

        manifest = client.create_manifest(
            labeled_dataset_ids=[labeled["id"]], job_ids=[job["id"]], threshold=0.0
        )
        cfg = TrainConfig.from_flat(
            dict(
                manifest_id=manifest["id"],
                api_url=stack.url,
                out_dir=str(tmp_path / "run"),
                architecture="resnet10t",
                steps=2,
                batch_size=4,
                pseudo_ratio=1,
                workers=1,  # a DataLoader process reads the bucket after the fork
                warmup_steps=1,
                progress=False,
                checkpoint_every=0,
                register=True,
            )
        )
        student_id = train_module.train(cfg)["teacher_id"]
        assert bucket.url(f"artifacts/teachers/{student_id}.safetensors") in storage.list_files(
            bucket.url("artifacts/teachers")
        )
        client.wait_for_teacher(student_id, timeout=120)
        stack.kill_worker(first)

        stack.start_worker(NST_DATA_DIR=str(tmp_path / "host2"))
        again = client.wait_for_job(
            client.create_job(teacher_id=student_id, dataset_id=pool["id"])["id"], timeout=120
        )
        assert (again["state"], again["items_failed"]) == ("succeeded", 1), stack.logs()
        assert len(list(client.labels(again["id"]))) == POOL - 1
        assert (tmp_path / "host2" / "cache" / "teachers" / f"{student_id}.safetensors").is_file()
        downloaded = client.download_teacher(student_id, tmp_path / "student.safetensors")
        assert (
            storage.read_bytes(bucket.url(f"artifacts/teachers/{student_id}.safetensors"))
            == downloaded.read_bytes()
        )

        exports = [
            client.export_labels(job["id"], tmp_path / "labels.jsonl", fmt="jsonl"),
            client.export_manifest(manifest["id"], tmp_path / "manifest.parquet"),
        ]
    finally:
        stack.stop()
    dump = "\n".join(sqlite3.connect(shared / "nst.db").iterdump()).encode()
    assert dump.count(b"s3://nst-test/fmnist/pool/") >= POOL - 1  # the dump holds the URIs...
    readable = [
        dump,
        *(p.read_bytes() for p in exports),
        *(p.read_bytes() for p in (tmp_path / "logs").glob("*.log")),
    ]
    readable += [p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()]
    for blob in readable:  # ...and no credential
        assert bucket.secret.encode() not in blob and bucket.access_key.encode() not in blob
