"""The labeling logic, run in-process (no broker), on SQLite and on PostgreSQL."""

import errno
import os
import shutil
import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file
from sqlalchemy import func, select

from nst.checkpoint import save_teacher
from nst.config import get_settings
from nst.states import ShardState
from service.core.db import session_scope
from service.lifecycle import ShardResult
from service.models import Item, ItemError, Job, Label, Shard, utcnow
from tests.utils import factories
from tests.utils.teacher import TEACHER_ARCH, direct_probs, metadata
from workers import decode, label_writes, labeling
from workers.soft_labels import soft_labels
from workers.teacher_model import ImageFormat, eval_transform

FORMAT_28 = ImageFormat(1, 28, "bilinear", (0.5,), (0.5,), 1.0)

LABEL = "workers.tasks.label_shard"


def _settings(**changes) -> labeling.LabelingSettings:
    """The worker's settings, on the CPU and decoding in-process, with ``changes``."""
    settings = labeling.LabelingSettings.from_settings(get_settings())
    return replace(settings, device="cpu", decode_workers=0, **changes)


def _job(client, teacher: dict, dataset: dict, **options) -> dict:
    """A job labeled in eager float32. These tests are about the labeling loop, which is the same
    in every mode (the modes: tests/workers/test_inference.py); preparing OpenVINO, the CPU's
    default, took about 5 s of each test."""
    return factories.job(client, teacher, dataset, **{"inference": "eager", **options})


def _run_enqueued(enqueued, settings: labeling.LabelingSettings | None = None) -> list[ShardResult]:
    results = [labeling.label_shard(arg, settings or _settings()) for name, arg in enqueued if name == LABEL]
    enqueued.clear()
    return results


def _label_count(job_id: int) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(Label).where(Label.job_id == job_id))


@pytest.fixture
def pool(client, fmnist):
    return factories.unlabeled_dataset(client, fmnist / "unlabeled")


def test_labels_match_a_direct_forward_pass(backend, client, enqueued, teacher_file, pool, fmnist):
    teacher = factories.ready_teacher(client, teacher_file)
    assert teacher["status"] == "ready", teacher["status_reason"]
    job = factories.job(client, teacher, pool, shard_size=128, batch_size=50)  # auto: the CPU's default
    results = _run_enqueued(enqueued)
    assert [r.state for r in results] == ["succeeded"] * 3
    done = client.get(f"/jobs/{job['id']}").json()
    assert (done["state"], done["items_done"], done["shards_done"]) == ("succeeded", 300, 3)
    assert done["throughput_items_per_s"] > 0 and done["eta_s"] is None

    truth = direct_probs(teacher_file, fmnist / "unlabeled")
    labels = client.get(f"/jobs/{job['id']}/labels", params={"limit": 1000}).json()["data"]
    assert len(labels) == 300
    for label in labels:
        expected = truth[label["uri"]]
        assert label["predicted"] == int(expected.argmax())
        assert label["confidence"] == pytest.approx(float(expected.max()), abs=1e-4)
        assert np.allclose(label["probs"], expected.numpy(), atol=1e-3)  # float16 storage
        entropy = float(-(expected * expected.log()).sum())
        assert label["entropy"] == pytest.approx(entropy, abs=1e-3)
    assert len({lab["predicted"] for lab in labels}) > 3  # a real teacher, not a constant


def test_a_shard_run_twice_writes_each_label_once(backend, client, enqueued, teacher_file, pool):
    teacher = factories.ready_teacher(client, teacher_file)
    job = _job(client, teacher, pool, shard_size=300)
    shard_id = enqueued[-1][1]
    labeling.label_shard(shard_id, _settings())
    with session_scope() as session:  # a redelivered message finds the shard as it was
        session.get(Shard, shard_id).state = ShardState.RUNNING
    again = labeling.label_shard(shard_id, _settings())
    assert again.state == "succeeded" and again.labeled == 300
    assert _label_count(job["id"]) == 300
    with session_scope() as session:
        assert session.get(Shard, shard_id).attempts == 2


def test_a_late_message_for_a_deleted_jobs_shard_is_dropped(client, enqueued, teacher_file, pool):
    teacher = factories.ready_teacher(client, teacher_file)
    job = _job(client, teacher, pool, shard_size=300)
    shard_id = enqueued[-1][1]
    labeling.label_shard(shard_id, _settings(worker="w1@host"))
    with session_scope() as session:
        assert session.get(Shard, shard_id).workers == "w1@host"  # provenance: the worker's name
    assert client.delete(f"/jobs/{job['id']}").status_code == 204
    assert labeling.label_shard(shard_id, _settings()) == ShardResult("missing")  # a redelivery
    assert _label_count(job["id"]) == 0


def test_a_redelivery_with_nothing_left_keeps_the_mode_that_labeled(
    client, enqueued, teacher_file, pool, monkeypatch
):
    teacher = factories.ready_teacher(client, teacher_file)
    job = _job(client, teacher, pool, shard_size=300)
    shard_id = enqueued[-1][1]
    labeling.label_shard(shard_id, _settings())
    with session_scope() as session:  # a late copy, on a worker whose mode would differ
        session.get(Shard, shard_id).state = ShardState.RUNNING
    monkeypatch.setattr(labeling.inference, "resolve", lambda mode, device: "bf16")
    assert labeling.label_shard(shard_id, _settings()).state == "succeeded"
    assert client.get(f"/jobs/{job['id']}").json()["inference_used"] == ["eager"]


def test_a_crash_mid_shard_loses_nothing_and_duplicates_nothing(
    backend, client, enqueued, teacher_file, pool, monkeypatch
):
    teacher = factories.ready_teacher(client, teacher_file)
    job = _job(client, teacher, pool, shard_size=300, batch_size=32)
    shard_id = enqueued[-1][1]
    settings = _settings(commit_rows=1)  # a transaction per batch
    real_commit, commits = label_writes.commit_labels, []

    def crash_after_three(*args, **kwargs):
        if len(commits) == 3:
            raise SystemExit("worker killed")
        commits.append(1)
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(label_writes, "commit_labels", crash_after_three)
    with pytest.raises(SystemExit):
        labeling.label_shard(shard_id, settings)
    assert _label_count(job["id"]) == 96
    partial = client.get(f"/jobs/{job['id']}").json()
    assert (partial["state"], partial["items_done"]) == ("running", 96)
    assert partial["eta_s"] is not None

    monkeypatch.setattr(label_writes, "commit_labels", real_commit)
    assert labeling.label_shard(shard_id, settings).state == "succeeded"
    assert _label_count(job["id"]) == 300
    assert client.get(f"/jobs/{job['id']}").json()["items_done"] == 300


class Killed(BaseException):
    """The worker process dying (the OOM killer) while it reads an image: nothing catches it."""


def _small_pool(client, fmnist, count: int = 20) -> tuple[dict, list[Path]]:
    root = Path(os.environ["NST_DATA_ROOTS"].split(",")[0]) / "small"
    root.mkdir()
    for png in sorted((fmnist / "unlabeled").glob("*.png"))[:count]:
        shutil.copy(png, root)
    return factories.unlabeled_dataset(client, root, name="small"), sorted(root.glob("*.png"))


def _small_job(client, enqueued, teacher_file, fmnist) -> tuple[dict, int, list[Path]]:
    """A job of batches of 8 over a pool of 20 images in one shard, its shard and the files."""
    dataset, files = _small_pool(client, fmnist)
    job = _job(client, factories.ready_teacher(client, teacher_file), dataset, batch_size=8)
    return job, enqueued[-1][1], files


def _assert_succeeded(client, job: dict, *, labeled: int, failed: int) -> None:
    done = client.get(f"/jobs/{job['id']}").json()
    assert (done["state"], done["items_done"], done["items_failed"]) == ("succeeded", labeled, failed)


def _cancel_after_two_commits(client, job: dict, monkeypatch) -> None:
    """The job is cancelled through the API just before the shard's third commit."""
    real_commit, commits = label_writes.commit_labels, []

    def cancel_after_two(*args, **kwargs):
        if len(commits) == 2:
            client.post(f"/jobs/{job['id']}/cancel")
        commits.append(1)
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(label_writes, "commit_labels", cancel_after_two)


def _failing_reads(monkeypatch, uri_end: str, error: BaseException, times: int | None) -> None:
    """Reading the file whose URI ends with ``uri_end`` raises ``error`` (``times`` times)."""
    real, calls = decode._read, []

    def read(uri):
        if uri.endswith(uri_end) and (times is None or len(calls) < times):
            calls.append(uri)
            raise error
        return real(uri)

    monkeypatch.setattr(decode, "_read", read)


def _errors(job_id: int) -> list[tuple[str, str]]:
    with session_scope() as session:
        return [
            (e.kind, e.message) for e in session.scalars(select(ItemError).where(ItemError.job_id == job_id))
        ]


def test_a_failed_read_is_retried_by_a_later_attempt_not_lost(
    backend, client, enqueued, teacher_file, fmnist, monkeypatch
):
    job, shard_id, files = _small_job(client, enqueued, teacher_file, fmnist)
    _failing_reads(monkeypatch, files[3].name, OSError(errno.EIO, "Input/output error"), times=1)
    with pytest.raises(labeling.TransientItemErrors):
        labeling.label_shard(shard_id, _settings())
    with session_scope() as session:  # released for the task's retry, the item not yet judged
        assert session.get(Shard, shard_id).state == ShardState.QUEUED
    assert _label_count(job["id"]) == 19 and _errors(job["id"]) == [
        ("transient", "OSError: [Errno 5] Input/output error")
    ]

    assert labeling.label_shard(shard_id, _settings()).state == "succeeded"  # the retry reads it
    assert _label_count(job["id"]) == 20 and _errors(job["id"]) == []
    _assert_succeeded(client, job, labeled=20, failed=0)


def test_an_image_the_worker_dies_on_twice_is_skipped_and_the_rest_labeled(
    backend, client, enqueued, teacher_file, fmnist, monkeypatch
):
    job, shard_id, files = _small_job(client, enqueued, teacher_file, fmnist)
    _failing_reads(monkeypatch, files[5].name, Killed(), times=None)
    for attempt in (1, 2, 3, 4):  # each message redelivered at once: no lease lapses
        with pytest.raises(Killed):
            labeling.label_shard(shard_id, _settings())
        if attempt == 3:  # the first careful attempt: the five before it labeled, it marked once
            assert _label_count(job["id"]) == 5
            assert _errors(job["id"]) == [("suspect", label_writes.DIED_ONCE)]
    assert _errors(job["id"]) == [("permanent", label_writes.DIED_TWICE)]

    assert labeling.label_shard(shard_id, _settings()).state == "succeeded"
    assert _label_count(job["id"]) == 19
    _assert_succeeded(client, job, labeled=19, failed=1)


def test_a_careful_attempt_killed_once_on_an_image_labels_it_the_next_time(
    backend, client, enqueued, teacher_file, fmnist, monkeypatch
):
    """A kill from outside lands on some image too: one death does not condemn it."""
    job, shard_id, files = _small_job(client, enqueued, teacher_file, fmnist)
    with session_scope() as session:  # two claims that did not finish: the next is careful
        session.get(Shard, shard_id).attempts = labeling.CAREFUL_FROM_ATTEMPT - 1
    _failing_reads(monkeypatch, files[5].name, Killed(), times=1)
    with pytest.raises(Killed):
        labeling.label_shard(shard_id, _settings())
    assert _errors(job["id"]) == [("suspect", label_writes.DIED_ONCE)]

    assert labeling.label_shard(shard_id, _settings()).state == "succeeded"
    assert _label_count(job["id"]) == 20 and _errors(job["id"]) == []
    _assert_succeeded(client, job, labeled=20, failed=0)


def test_a_careful_pass_ended_by_an_error_takes_its_mark_back(
    backend, client, enqueued, teacher_file, fmnist, monkeypatch
):
    """An error the worker lives to see (here the forward) says nothing against the image: only
    a death leaves its mark, so a resumed job loses no image to it."""
    job, shard_id, _ = _small_job(client, enqueued, teacher_file, fmnist)
    with session_scope() as session:
        session.get(Shard, shard_id).attempts = labeling.CAREFUL_FROM_ATTEMPT - 1
    real_forward, calls = labeling._forward, []

    def failing(runner, images):
        calls.append(1)
        if len(calls) in (4, 5):  # the fourth image, and again in the pass's second run
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_forward(runner, images)

    monkeypatch.setattr(labeling, "_forward", failing)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        labeling.label_shard(shard_id, _settings())
    assert _label_count(job["id"]) == 3 and _errors(job["id"]) == []

    monkeypatch.setattr(labeling, "_forward", real_forward)
    with session_scope() as session:
        session.get(Shard, shard_id).state = ShardState.RUNNING  # the task's retry
    assert labeling.label_shard(shard_id, _settings()).state == "succeeded"
    assert _label_count(job["id"]) == 20 and _errors(job["id"]) == []


def test_a_cancel_in_a_careful_pass_leaves_no_mark(
    backend, client, enqueued, teacher_file, fmnist, monkeypatch
):
    job, shard_id, _ = _small_job(client, enqueued, teacher_file, fmnist)
    with session_scope() as session:
        session.get(Shard, shard_id).attempts = labeling.CAREFUL_FROM_ATTEMPT - 1
    _cancel_after_two_commits(client, job, monkeypatch)
    assert labeling.label_shard(shard_id, _settings()).state == "cancelled"
    assert _label_count(job["id"]) == 2 and _errors(job["id"]) == []


def test_a_copy_past_the_attempts_leaves_a_shard_whose_lease_is_live(
    backend, client, enqueued, teacher_file, pool, monkeypatch
):
    """A duplicate delivery while the last attempt still labels must not fail it: the holder
    finishes, or, if it died, the reaper fails the shard once its lease lapses."""
    monkeypatch.setenv("NST_SHARD_MAX_ATTEMPTS", "2")
    get_settings.cache_clear()
    _job(client, factories.ready_teacher(client, teacher_file), pool, shard_size=300)
    shard_id = enqueued[-1][1]
    with session_scope() as session:
        shard = session.get(Shard, shard_id)
        shard.state, shard.attempts = ShardState.RUNNING, 2
        shard.lease_expires_at = utcnow() + timedelta(seconds=20)
    assert labeling.label_shard(shard_id, _settings()).state == "running"
    with session_scope() as session:
        assert session.get(Shard, shard_id).state == ShardState.RUNNING
        session.get(Shard, shard_id).lease_expires_at = utcnow() - timedelta(seconds=1)
    assert labeling.label_shard(shard_id, _settings()).state == "failed"


def test_a_shard_claimed_past_its_attempts_fails_and_a_resume_starts_them_afresh(
    backend, client, enqueued, teacher_file, pool, monkeypatch
):
    monkeypatch.setenv("NST_SHARD_MAX_ATTEMPTS", "2")
    get_settings.cache_clear()
    job = _job(client, factories.ready_teacher(client, teacher_file), pool, shard_size=300)
    shard_id = enqueued[-1][1]
    with session_scope() as session:  # a worker died twice holding it
        session.get(Shard, shard_id).attempts = 2
    assert labeling.label_shard(shard_id, _settings()).state == "failed"
    failed = client.get(f"/jobs/{job['id']}").json()
    assert failed["state"] == "failed"
    assert "claimed 2 times without finishing (NST_SHARD_MAX_ATTEMPTS=2)" in failed["errors"][0]

    assert client.post(f"/jobs/{job['id']}/resume").status_code == 200
    assert labeling.label_shard(shard_id, _settings()).state == "succeeded"
    assert client.get(f"/jobs/{job['id']}/shards").json()["data"][0]["attempts"] == 1


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_a_cancel_waits_for_a_commit_in_flight_and_the_next_commit_sees_it(
    backend, client, enqueued, teacher_file, pool, monkeypatch
):
    job = _job(client, factories.ready_teacher(client, teacher_file), pool, shard_size=300)
    shard_id = enqueued[-1][1]
    labeling.start_shard(shard_id)
    inserting, release = threading.Event(), threading.Event()
    real_insert = label_writes.insert_ignoring_duplicates

    def slow_insert(*args):
        inserting.set()
        release.wait(10)
        return real_insert(*args)

    monkeypatch.setattr(label_writes, "insert_ignoring_duplicates", slow_insert)
    with session_scope() as session:
        job_row = session.get(Job, job["id"])
        session.expunge(job_row)
    commit = threading.Thread(target=label_writes.commit_labels, args=(shard_id, job_row, [], []))
    commit.start()
    assert inserting.wait(10)
    cancel = threading.Thread(target=lambda: client.post(f"/jobs/{job['id']}/cancel"))
    cancel.start()
    cancel.join(1.0)
    assert cancel.is_alive()  # waits for the commit that read the job as not cancelled
    release.set()
    commit.join(10)
    cancel.join(10)
    monkeypatch.setattr(label_writes, "insert_ignoring_duplicates", real_insert)
    assert label_writes.commit_labels(shard_id, job_row, [], []).state == "cancelled"


def test_a_crash_inside_the_finishing_transaction_keeps_only_what_committed(
    backend, client, enqueued, teacher_file, pool, monkeypatch
):
    """The shard's last labels and its finish share a transaction: dying between the inserts and
    the finish rolls both back, and the redelivered shard writes them once."""
    teacher = factories.ready_teacher(client, teacher_file)
    job = _job(client, teacher, pool, shard_size=300, batch_size=32)
    shard_id = enqueued[-1][1]
    settings = _settings(commit_rows=128, commit_seconds=3600)  # commits by rows only
    real_succeed = label_writes.succeed_shard

    def die(*args, **kwargs):
        raise SystemExit("worker killed after the last inserts")

    monkeypatch.setattr(label_writes, "succeed_shard", die)
    with pytest.raises(SystemExit):
        labeling.label_shard(shard_id, settings)
    assert _label_count(job["id"]) == 256  # two committed transactions; the last 44 rolled back
    shard = client.get(f"/jobs/{job['id']}/shards").json()["data"][0]
    assert (shard["state"], shard["items_done"]) == ("running", 256)

    monkeypatch.setattr(label_writes, "succeed_shard", real_succeed)
    again = labeling.label_shard(shard_id, settings)
    assert (again.state, again.labeled) == ("succeeded", 300)
    assert _label_count(job["id"]) == 300


def _record_commit_sizes(monkeypatch) -> list[tuple[int, bool]]:
    """Rows (labels + item errors) per transaction, as the worker commits them, and whether the
    transaction also finished the shard."""
    real_commit, sizes = label_writes.commit_labels, []

    def record(shard_id, job, rows, bad, *, last=False):
        sizes.append((len(rows) + len(bad), last))
        return real_commit(shard_id, job, rows, bad, last=last)

    monkeypatch.setattr(label_writes, "commit_labels", record)
    return sizes


def test_small_batches_are_written_in_larger_transactions(
    backend, client, enqueued, teacher_file, pool, monkeypatch
):
    teacher = factories.ready_teacher(client, teacher_file)
    job = _job(client, teacher, pool, shard_size=300, batch_size=32)
    sizes = _record_commit_sizes(monkeypatch)
    assert _run_enqueued(enqueued, _settings(commit_rows=100, commit_seconds=3600))[0].state == "succeeded"
    # Four batches of 32 per transaction, then the rest with the shard's finish: one transaction.
    assert sizes == [(128, False), (128, False), (44, True)]
    assert _label_count(job["id"]) == 300
    assert client.get(f"/jobs/{job['id']}").json()["items_done"] == 300


def test_a_slow_shard_still_commits_every_commit_seconds(client, enqueued, teacher_file, pool, monkeypatch):
    teacher = factories.ready_teacher(client, teacher_file)
    _job(client, teacher, pool, shard_size=300, batch_size=32)
    sizes = _record_commit_sizes(monkeypatch)
    assert _run_enqueued(enqueued, _settings(commit_rows=10_000, commit_seconds=0.0))[0].state == "succeeded"
    # Every batch commits at once; the shard's finish then has no rows left to carry.
    assert sizes == [(32, False)] * 9 + [(12, False), (0, True)]


def test_progress_grows_only_by_labels_a_commit_really_inserted(
    backend, client, enqueued, teacher_file, pool
):
    teacher = factories.ready_teacher(client, teacher_file)
    created = _job(client, teacher, pool, shard_size=300)
    shard_id = enqueued[-1][1]
    with session_scope() as session:
        job = session.get(Job, created["id"])
        item_ids = list(
            session.scalars(
                select(Item.id).where(Item.dataset_id == pool["id"]).order_by(Item.ordinal).limit(12)
            )
        )
    rows = soft_labels(torch.randn(10, 10), temperature=1.0, keep_all=True, top_k=5)
    for row, item_id in zip(rows, item_ids, strict=False):
        row.update(job_id=job.id, item_id=item_id)
    bad = [{"job_id": job.id, "item_id": i, "message": "OSError: unreadable"} for i in item_ids[10:]]

    def progress():
        shard = client.get(f"/jobs/{job.id}/shards").json()["data"][0]
        return shard["items_done"], shard["items_failed"]

    assert label_writes.commit_labels(shard_id, job, rows[:6], bad[:1]) is None
    assert progress() == (6, 1)
    label_writes.commit_labels(shard_id, job, rows[3:10], bad)  # 3 labels and 1 error already stored
    assert progress() == (10, 2)
    label_writes.commit_labels(shard_id, job, rows, bad)  # a whole redelivered batch: nothing new
    assert progress() == (10, 2)
    assert _label_count(job.id) == 10


def test_corrupt_images_are_item_errors_not_shard_failures(backend, client, enqueued, teacher_file, fmnist):
    root = Path(os.environ["NST_DATA_ROOTS"].split(",")[0]) / "mixed"
    root.mkdir()
    for png in sorted((fmnist / "unlabeled").glob("*.png"))[:20]:
        shutil.copy(png, root)
    (root / "zz-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "zz-empty.jpg").write_bytes(b"")
    dataset = factories.unlabeled_dataset(client, root)
    teacher = factories.ready_teacher(client, teacher_file)
    job = _job(client, teacher, dataset, batch_size=8)
    assert [r.state for r in _run_enqueued(enqueued)] == ["succeeded"]
    done = client.get(f"/jobs/{job['id']}").json()
    assert (done["state"], done["items_done"], done["items_failed"]) == ("succeeded", 20, 2)
    first = client.get(f"/jobs/{job['id']}/errors", params={"limit": 1}).json()
    second = client.get(
        f"/jobs/{job['id']}/errors", params={"limit": 1, "cursor": first["next_cursor"]}
    ).json()
    assert (first["count"], second["count"], second["next_cursor"]) == (
        2,
        2,
        None,
    )  # the whole, on every page
    errors = first["data"] + second["data"]
    messages = sorted((Path(e["uri"]).name, e["message"]) for e in errors)
    assert messages == [
        ("zz-corrupt.png", "OSError: Truncated File Read"),
        ("zz-empty.jpg", "UnidentifiedImageError: not an image file Pillow can read"),  # not Pillow's buffer
    ]


def test_cancel_stops_a_running_shard_at_its_next_commit(
    backend, client, enqueued, teacher_file, pool, monkeypatch
):
    teacher = factories.ready_teacher(client, teacher_file)
    job = _job(client, teacher, pool, shard_size=300, batch_size=50)
    _cancel_after_two_commits(client, job, monkeypatch)
    # A transaction per batch.
    assert _run_enqueued(enqueued, _settings(commit_rows=1))[0].state == "cancelled"
    assert _label_count(job["id"]) == 100
    assert client.get(f"/jobs/{job['id']}").json()["state"] == "cancelled"


def test_many_classes_keep_top_k_and_the_rest_mass(backend, client, enqueued, pool):
    names = [f"c{i}" for i in range(120)]
    model = timm.create_model(TEACHER_ARCH, num_classes=120, in_chans=1)
    path = save_teacher(
        model.state_dict(),
        Path(os.environ["NST_DATA_ROOTS"].split(",")[0]) / "big.safetensors",
        metadata(class_names=names),
    )
    teacher = factories.ready_teacher(client, path)
    job = _job(client, teacher, pool, top_k=5)
    _run_enqueued(enqueued)
    label = client.get(f"/jobs/{job['id']}/labels", params={"limit": 1}).json()["data"][0]
    assert len(label["probs"]) == 5 and len(label["top_indices"]) == 5
    assert label["top_indices"][0] == label["predicted"]
    assert label["probs"] == sorted(label["probs"], reverse=True)
    assert sum(label["probs"]) + label["rest_mass"] == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize(
    ("arch", "classes", "reason"),
    [
        ("resnet10t", 7, "shape mismatch"),
        ("resnet18", 10, "missing tensor"),
        ("no_such_net", 10, "does not build"),
    ],
)
def test_checkpoints_that_do_not_fit_become_invalid_with_the_reason(
    client, teacher_file, tmp_path, arch, classes, reason
):
    from tests.utils.teacher import CLASSES

    names = (CLASSES + ["x", "y"])[:classes]
    path = Path(os.environ["NST_DATA_ROOTS"].split(",")[0]) / f"{arch}-{classes}.safetensors"
    save_teacher(load_file(str(teacher_file)), path, metadata(architecture=arch, class_names=names))
    teacher = factories.ready_teacher(client, path)
    assert teacher["status"] == "invalid"
    assert reason in teacher["status_reason"]


def test_labels_export_as_jsonl_and_parquet_match_the_pages(backend, client, enqueued, teacher_file, pool):
    import io
    import json

    import pyarrow.parquet as pq

    teacher = factories.ready_teacher(client, teacher_file)
    job = _job(client, teacher, pool, shard_size=100)
    _run_enqueued(enqueued)
    pages, cursor = [], None
    while True:
        params = {"limit": 128, **({"cursor": cursor} if cursor is not None else {})}
        page = client.get(f"/jobs/{job['id']}/labels", params=params).json()
        pages += page["data"]
        if (cursor := page["next_cursor"]) is None:
            break
    assert len(pages) == 300 and len({p["item_id"] for p in pages}) == 300
    jsonl = client.get(f"/jobs/{job['id']}/labels", params={"format": "jsonl"})
    rows = [json.loads(line) for line in jsonl.text.splitlines()]
    assert [r["item_id"] for r in rows] == [p["item_id"] for p in pages]
    assert rows[7]["probs"] == pytest.approx(pages[7]["probs"])
    parquet = client.get(f"/jobs/{job['id']}/labels", params={"format": "parquet"})
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.num_rows == 300
    assert table.column("item_id").to_pylist() == [p["item_id"] for p in pages]
    assert table.column("confidence").to_pylist()[3] == pytest.approx(pages[3]["confidence"])


@pytest.mark.parametrize(("batch_size", "items"), [(64, 200), (64, 64), (3, 7), (1, 3), (64, 0)])
def test_ramped_decode_batches_join_into_whole_model_batches(batch_size, items):
    """A shard's first decode batches are smaller (the model starts sooner); the model still
    sees every key once, in order, in batches of the job's size."""
    keys = [(i, f"/x/{i}.png") for i in range(items)]
    batches = decode.ShardBatches()
    batches.start(keys, FORMAT_28, batch_size)
    decoded = [
        decode.collate(
            [(torch.zeros(1, 2, 2, dtype=torch.uint8), item_id, "", fmt) for item_id, _, fmt in part]
        )
        for part in batches
    ]
    if batch_size >= 4 and items > batch_size:
        assert len(decoded[0][1]) == batch_size // 4
    model_batches = list(decode.model_batches(decoded, batch_size))
    sizes = [len(ids) for _, ids, _ in model_batches]
    assert all(s == batch_size for s in sizes[:-1]) and (not sizes or 0 < sizes[-1] <= batch_size)
    assert [i for _, ids, _ in model_batches for i in ids] == list(range(items))
    assert all(len(images) == len(ids) == len(errors) for images, ids, errors in model_batches)


def test_one_set_of_decode_processes_serves_teachers_of_different_formats(fmnist):
    """A new teacher (each generation of the loop brings one) reuses the decode processes,
    and its images come out in its own format, not the last teacher's."""
    decode.decoder.cache_clear()
    loader, batches = decode.decoder("cpu", 1)
    files = sorted((fmnist / "unlabeled").rglob("*.png"))[:6]
    keys = [(i, str(path)) for i, path in enumerate(files)] + [(99, str(fmnist / "missing.png"))]
    formats = (FORMAT_28, ImageFormat(3, 40, "bicubic", (0.4, 0.5, 0.6), (0.2, 0.2, 0.2), 0.875))
    seen = []
    try:
        for image_format, batch_size in zip(formats, (4, 3), strict=True):
            batches.start(keys, image_format, batch_size)
            model_batches = list(decode.model_batches(loader, batch_size))
            sizes = [len(ids) for _, ids, _ in model_batches]
            assert sizes == [batch_size] * (7 // batch_size) + [7 % batch_size]  # this job's size
            images, item_ids, errors = decode.join(model_batches)
            assert item_ids == [*range(6), 99]
            assert errors[:6] == [""] * 6 and errors[6].startswith("FileNotFoundError")
            expected = []
            for path in files:  # the batch's normalisation gives what timm's per-image steps give
                with Image.open(path) as image:
                    expected.append(eval_transform(image_format)(image.convert(image_format.mode)))
            assert images.dtype == torch.float32 and torch.equal(images[:6], torch.stack(expected))
            assert images.shape[1:] == image_format.shape
            seen.append({w.pid for w in loader._iterator._workers})
            assert decode.decoder("cpu", 1) == (loader, batches)
        assert seen[0] == seen[1]  # the same decode process, not a fresh one per teacher
    finally:
        decode.decoder.cache_clear()


def test_a_non_finite_teacher_output_is_an_item_error_not_a_label():
    from workers.soft_labels import soft_labels

    logits = torch.tensor(
        [[2.0, 0.0, 1.0], [float("nan"), 0.0, 1.0], [float("inf"), 0.0, 1.0], [0.0, 3.0, 1.0]]
    )
    rows = soft_labels(logits, temperature=1.0, keep_all=True, top_k=3)
    for item_id, row in enumerate(rows, start=10):
        row["item_id"] = item_id
    kept, not_finite = labeling.finite_rows(rows)
    assert [row["item_id"] for row in kept] == [10, 13] and not_finite == [11, 12]
    assert labeling.finite_rows(kept) == (kept, [])
