from pathlib import Path

import pytest

from tests.utils import factories

LABEL = "workers.tasks.label_shard"


@pytest.fixture
def teacher(client, teacher_file):
    return factories.ready_teacher(client, teacher_file)


@pytest.fixture
def pool(client, fmnist):
    return factories.unlabeled_dataset(client, fmnist / "unlabeled")


def test_job_is_split_into_shards_enqueued_after_commit(client, teacher, pool, enqueued):
    enqueued.clear()
    job = factories.job(client, teacher, pool, shard_size=128)
    assert job["state"] == "queued"
    assert (job["items_total"], job["shards_total"], job["items_done"]) == (300, 3, 0)
    assert [name for name, _ in enqueued] == [LABEL] * 3
    assert len({shard for _, shard in enqueued}) == 3


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"teacher_id": "0" * 64}, 422, "teacher_id: unknown teacher"),
        ({"dataset_id": 999}, 422, "dataset_id: unknown dataset"),
        ({"top_k": 11}, 422, "top_k: 11 exceeds the teacher's 10 classes"),
    ],
)
def test_bad_job_requests_name_the_problem(client, teacher, pool, change, status, message):
    body = {"teacher_id": teacher["id"], "dataset_id": pool["id"], **change}
    response = client.post("/jobs", json=body)
    assert response.status_code == status
    assert message in response.json()["detail"]
    assert client.get("/jobs").json()["count"] == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("shard_size", 0),
        ("temperature", 0),
        # logits / 1e-300 is inf in float32, and PostgreSQL's REAL refuses 1e-50 with a 500
        ("temperature", 1e-300),
        ("temperature", 0.001),
        # Strict: JSON's true is not a size, "yes" not a flag, a string not a number or an ID
        ("batch_size", True),
        ("shard_size", 2.0),
        ("noised_teacher", "yes"),
        ("noised_teacher", 1),
        ("temperature", "1.5"),
        ("dataset_id", "1"),
    ],
)
def test_out_of_range_options_are_422_naming_the_field(client, teacher, pool, field, value):
    body = {"teacher_id": teacher["id"], "dataset_id": pool["id"], field: value}
    response = client.post("/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["body", field]
    assert client.get("/jobs").json()["count"] == 0


def test_teacher_that_is_not_ready_cannot_label(client, teacher_file, pool):
    pending = client.post(
        "/teachers/upload", files={"file": ("t.safetensors", teacher_file.read_bytes())}
    ).json()
    assert pending["status"] == "pending"  # no worker has validated it
    response = client.post("/jobs", json={"teacher_id": pending["id"], "dataset_id": pool["id"]})
    assert response.status_code == 409 and "pending" in response.json()["detail"]


def test_cancel_settles_queued_shards(client, teacher, pool):
    job = factories.job(client, teacher, pool, shard_size=100)
    cancelled = client.post(f"/jobs/{job['id']}/cancel").json()
    assert cancelled["state"] == "cancelled" and cancelled["finished_at"] is not None
    again = client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    assert client.post(f"/jobs/{job['id']}/resume").status_code == 409


def test_dataset_in_use_cannot_be_deleted(client, teacher, pool):
    job = factories.job(client, teacher, pool)
    response = client.delete(f"/datasets/{pool['id']}")
    assert response.status_code == 409 and f"[{job['id']}]" in response.json()["detail"]


def test_unknown_job_is_404(client):
    for method, path in [
        ("get", "/jobs/5"),
        ("post", "/jobs/5/cancel"),
        ("get", "/jobs/5/labels"),
        ("post", "/jobs/5/resume"),
        ("get", "/jobs/5/shards"),
    ]:
        response = getattr(client, method)(path)
        assert response.status_code == 404 and "job 5 not found" in response.json()["detail"]


@pytest.mark.usefixtures("backend")
def test_label_exports_name_the_classes_beside_the_indices(client):
    import io
    import json

    import pyarrow.parquet as pq

    from tests.utils import synthetic

    names = [f"c{i}" for i in range(6)]
    whole = synthetic.finished_job(synthetic.teacher(names[:3], name="whole"), [(2, 0.9)])
    top_k = synthetic.finished_job(synthetic.teacher(names, name="top"), [(4, 0.7)], full_distribution_max=4)
    line = json.loads(client.get(f"/jobs/{top_k.id}/labels", params={"format": "jsonl"}).text)
    assert line["predicted_class"] == "c4" and line["top_classes"] == [names[i] for i in line["top_indices"]]
    line = json.loads(client.get(f"/jobs/{whole.id}/labels", params={"format": "jsonl"}).text)
    assert (line["predicted_class"], line["top_classes"]) == ("c2", None)
    parquet = pq.ParquetFile(
        io.BytesIO(client.get(f"/jobs/{top_k.id}/labels", params={"format": "parquet"}).content)
    )
    row = parquet.read().to_pylist()[0]
    assert row["predicted_class"] == "c4" and row["top_classes"] == [names[i] for i in row["top_indices"]]
    assert json.loads(parquet.schema_arrow.metadata[b"nst.classes"]) == names


@pytest.mark.usefixtures("backend")
def test_a_job_list_page_reads_each_jobs_progress_as_its_own_page_does_in_as_few_queries(client):
    from sqlalchemy import select

    from service.core.db import get_engine, session_scope
    from service.models import Shard
    from tests.utils import synthetic
    from tests.utils.statements import recorded

    teacher = synthetic.teacher(["a", "b"])

    def listed() -> tuple[list[dict], int]:
        with recorded(get_engine()) as statements:
            page = client.get("/jobs").json()["data"]
        return page, len(statements)

    # A running job first: its recent pace is one more query, however many jobs are running.
    synthetic.finished_job(teacher, [(0, 0.7)], state="queued")
    _, one_job = listed()
    synthetic.finished_job(teacher, [(0, 0.9), (1, 0.4)])
    # Two failed jobs of seven one-item shards, each shard with its own error and mode.
    failed = [synthetic.finished_job(teacher, [(1, 0.8)] * 7, state="failed", shard_size=1) for _ in range(2)]
    synthetic.finished_job(teacher, [(0, 0.7)], state="queued")
    synthetic.finished_job(teacher, [])
    with session_scope() as session:
        for job in failed:
            for shard in session.scalars(select(Shard).where(Shard.job_id == job.id)):
                shard.error = f"job {job.id} shard {shard.index}"
                shard.inference = ["openvino", "eager"][shard.index % 2]
    page, six_jobs = listed()
    assert six_jobs == one_job
    states = ["running", "succeeded", "failed", "failed", "running", "succeeded"]
    assert [job["state"] for job in page] == states
    for job, listed_job in zip(failed, page[2:4], strict=True):
        assert listed_job["errors"] == [f"job {job.id} shard {i}" for i in range(5)]
        assert listed_job["inference_used"] == ["eager", "openvino"]
    assert page[1]["errors"] == [] and page[1]["inference_used"] == []
    clock = {"throughput_items_per_s", "eta_s", "worker_idle_s"}  # a running job's change as time passes
    for job in page:
        alone = client.get(f"/jobs/{job['id']}").json()
        if job["state"] == "running":
            job, alone = ({k: v for k, v in j.items() if k not in clock} for j in (job, alone))
        assert job == alone


def test_jobs_list_by_teacher_and_by_dataset(client, teacher, pool):
    other_pool = factories.unlabeled_dataset(client, Path(pool["source_path"]), name="other")
    first = factories.job(client, teacher, pool)
    second = factories.job(client, teacher, other_pool)

    def listed(**filters) -> list[int]:
        return [job["id"] for job in client.get("/jobs", params=filters).json()["data"]]

    assert listed(teacher_id=teacher["id"]) == [first["id"], second["id"]]
    assert listed(teacher_id=teacher["id"], dataset_id=other_pool["id"]) == [second["id"]]
    assert listed(teacher_id="f" * 64) == []
    assert client.get("/jobs", params={"dataset_id": 0}).status_code == 422


def _rows_of_job(job_id: int) -> dict[str, int]:
    from sqlalchemy import func, select

    from service.core.db import session_scope
    from service.models import ItemError, Label, LabelBin, Shard

    with session_scope() as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).where(model.job_id == job_id))
            for model in (Shard, Label, LabelBin, ItemError)
        }


@pytest.mark.usefixtures("backend")
def test_a_job_is_deleted_with_its_labels_once_stopped_and_out_of_every_manifest(client):
    from sqlalchemy import update

    from service.core.db import session_scope
    from service.models import ItemError, Shard
    from tests.utils import synthetic

    teacher = synthetic.teacher(["cat", "dog"], name="deletable")
    job = synthetic.finished_job(teacher, [(0, 0.9), (1, 0.8), (1, 0.4)], state="running")
    with session_scope() as session:
        session.add(ItemError(job_id=job.id, item_id=job.item_ids[2], message="truncated PNG"))
    assert all(_rows_of_job(job.id).values())

    response = client.delete(f"/jobs/{job.id}")  # a shard running: its worker would write on
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"job {job.id} has shards queued or running: cancel it (POST /jobs/{job.id}/cancel) "
        "and delete it once they have stopped"
    )
    with session_scope() as session:
        session.execute(update(Shard).where(Shard.job_id == job.id).values(state="succeeded"))
    manifest = client.post("/manifests", json={"job_ids": [job.id], "threshold": 0.3}).json()
    response = client.delete(f"/jobs/{job.id}")
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"job {job.id} is part of manifest(s) ['{manifest['id']}'], which keep their inputs; "
        "delete those first"
    )
    assert client.delete(f"/manifests/{manifest['id']}").status_code == 204

    assert client.delete(f"/jobs/{job.id}").status_code == 204
    assert _rows_of_job(job.id) == {"shards": 0, "labels": 0, "label_bins": 0, "item_errors": 0}
    assert client.get(f"/jobs/{job.id}").status_code == 404
    assert client.delete(f"/jobs/{job.id}").status_code == 404
    assert client.delete(f"/datasets/{job.dataset_id}").status_code == 204  # nothing keeps it now


def test_the_cli_deletes_a_job(client, monkeypatch):
    from click.testing import CliRunner

    from cli.main import cli
    from tests.utils import synthetic
    from tests.utils.transport import in_process_client

    monkeypatch.setattr("cli.main.Client", lambda *_args, **_kwargs: in_process_client(client))
    job = synthetic.finished_job(synthetic.teacher(["a", "b"]), [(0, 0.9)])
    result = CliRunner().invoke(cli, ["jobs", "delete", str(job.id)])
    assert (result.exit_code, result.output) == (0, f"deleted job {job.id}\n")
    result = CliRunner().invoke(cli, ["jobs", "delete", str(job.id)])
    assert result.exit_code == 1 and f"job {job.id} not found" in result.output


@pytest.mark.usefixtures("backend")
def test_a_deleted_jobs_id_is_never_given_again(client):
    from tests.utils import synthetic

    teacher = synthetic.teacher(["a", "b"], name="ids")
    newest = synthetic.finished_job(teacher, [(0, 0.9)])  # the largest ID, which SQLite reused
    assert client.delete(f"/jobs/{newest.id}").status_code == 204
    assert client.delete(f"/datasets/{newest.dataset_id}").status_code == 204
    after = synthetic.finished_job(teacher, [(1, 0.8)])
    assert after.id > newest.id and after.dataset_id > newest.dataset_id
    assert min(after.item_ids) > max(newest.item_ids)  # a thumbnail a browser cached is not another's
    assert client.get(f"/jobs/{newest.id}").status_code == 404


def _failed_shards(indices: set[int], total: int):
    """A job of ``total`` one-item shards, those at ``indices`` failed with an error naming them."""
    from sqlalchemy import select

    from service.core.db import session_scope
    from service.models import Shard
    from tests.utils import synthetic

    job = synthetic.finished_job(synthetic.teacher(["a", "b"]), [(0, 0.9)] * total, shard_size=1)
    with session_scope() as session:
        for shard in session.scalars(select(Shard).where(Shard.job_id == job.id, Shard.index.in_(indices))):
            shard.state, shard.items_done, shard.items_failed = "failed", 0, 1
            shard.error = f"shard {shard.index} broke"
    return job


@pytest.mark.usefixtures("backend")
def test_a_jobs_shards_come_a_page_at_a_time_and_by_state(client):
    job = _failed_shards({1, 4}, total=7)
    shards = f"/jobs/{job.id}/shards"

    first = client.get(shards, params={"limit": 3}).json()
    assert [s["index"] for s in first["data"]] == [0, 1, 2]
    assert (first["next_cursor"], first["count"]) == (3, 7)
    second = client.get(shards, params={"limit": 3, "cursor": first["next_cursor"]}).json()
    last = client.get(shards, params={"limit": 3, "cursor": second["next_cursor"]}).json()
    assert [s["index"] for s in second["data"] + last["data"]] == [3, 4, 5, 6]
    assert (last["next_cursor"], last["count"]) == (None, 7)

    failed = client.get(shards, params={"state": "failed"}).json()
    assert [(s["index"], s["error"]) for s in failed["data"]] == [(1, "shard 1 broke"), (4, "shard 4 broke")]
    assert (failed["next_cursor"], failed["count"]) == (None, 2)
    page = client.get(shards, params={"state": ["failed", "succeeded"], "limit": 2, "cursor": 4}).json()
    assert [s["index"] for s in page["data"]] == [4, 5] and page["next_cursor"] == 6 and page["count"] == 7
    none = {"data": [], "next_cursor": None, "count": 0}
    assert client.get(shards, params={"state": "running"}).json() == none


@pytest.mark.parametrize(
    ("params", "field"),
    [({"state": "broken"}, "state"), ({"limit": 0}, "limit"), ({"cursor": -1}, "cursor")],
)
def test_a_bad_shard_query_is_422_naming_the_parameter(client, params, field):
    job = _failed_shards(set(), total=1)
    response = client.get(f"/jobs/{job.id}/shards", params=params)
    assert response.status_code == 422 and field in str(response.json()["detail"])


def test_the_cli_lists_a_jobs_shards_failed_ones_with_their_errors(client, monkeypatch):
    from click.testing import CliRunner

    from cli.main import cli
    from tests.utils.transport import in_process_client

    monkeypatch.setattr("cli.main.Client", lambda *_args, **_kwargs: in_process_client(client))
    job = _failed_shards({2, 1500}, total=1502)  # more than one page of 1,000
    result = CliRunner().invoke(cli, ["jobs", "shards", str(job.id)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [int(line.split()[0]) for line in lines] == list(range(1502))
    assert lines[2].split()[2] == "failed" and lines[2].endswith("error: shard 2 broke")
    result = CliRunner().invoke(cli, ["jobs", "shards", str(job.id), "--state", "failed"])
    assert [line.split()[0] for line in result.output.splitlines()] == ["2", "1500"]
    result = CliRunner().invoke(cli, ["jobs", "shards", str(job.id), "--state", "lost"])
    assert result.exit_code == 2 and "'lost' is not one of" in result.output
