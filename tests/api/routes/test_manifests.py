import io
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from nst import targets
from tests.utils import synthetic
from tests.utils.transport import in_process_client

CLASSES = ["cat", "dog", "eel"]
CAT, DOG, EEL = range(3)

pytestmark = pytest.mark.usefixtures("backend")  # first, so that the app opens the right database


@pytest.fixture
def teacher(client):
    return synthetic.teacher(CLASSES)


@pytest.fixture
def labeled(teacher):
    return synthetic.labeled_dataset(CLASSES, [CAT, CAT, DOG, EEL])


@pytest.fixture
def job(teacher):
    labels = [(CAT, 0.9), (CAT, 0.8), (CAT, 0.4), (DOG, 0.95), (DOG, 0.2), (EEL, 0.6)]
    return synthetic.finished_job(teacher, labels)


def post(client, **body):
    return client.post("/manifests", json=body)


def _manifest_count(client) -> int:
    return client.get("/manifests").json()["count"]


def test_a_manifest_reports_params_provenance_and_counts(client, teacher, labeled, job):
    response = post(client, labeled_dataset_ids=[labeled], job_ids=[job.id], target_per_class=4, seed=1)
    assert response.status_code == 201, response.text
    body = response.json()
    assert len(body["id"]) == 64 and int(body["id"], 16) >= 0
    assert body["classes"] == CLASSES
    assert (
        body["params"] | {"threshold": 0.3, "target_per_class": 4, "soft": True, "seed": 1} == body["params"]
    )
    assert body["provenance"] == {
        "teacher_ids": [teacher],
        "job_ids": [job.id],
        "labeled_dataset_ids": [labeled],
        "unlabeled_dataset_ids": [job.dataset_id],
    }
    counts = {
        name: [c["labeled"], c["pseudo_unique"], c["pseudo_with_copies"]]
        for name, c in body["class_counts"].items()
    }
    assert counts == {"cat": [2, 3, 4], "dog": [1, 1, 4], "eel": [1, 1, 4]}
    assert body["totals"] == {
        "labeled": 4,
        "pseudo_unique": 5,
        "pseudo_with_copies": 12,
        "entries": 9,
        "samples": 16,
    }
    assert client.get(f"/manifests/{body['id']}").json() == body
    assert [m["id"] for m in client.get("/manifests").json()["data"]] == [body["id"]]


def test_the_same_request_gives_the_same_manifest_and_a_new_job_a_new_one(client, teacher, labeled, job):
    request = {"labeled_dataset_ids": [labeled], "job_ids": [job.id], "seed": 5, "target_per_class": 3}
    first = post(client, **request)
    entries = client.get(f"/manifests/{first.json()['id']}/entries").json()["data"]
    again = post(client, **request, temperature=1.0, threshold=0.3)  # the defaults, spelled out
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert client.get(f"/manifests/{again.json()['id']}/entries").json()["data"] == entries
    assert _manifest_count(client) == 1

    relabeled = synthetic.finished_job(teacher, [(CAT, 0.9)] * 6, dataset_id=job.dataset_id)
    other = post(client, **request | {"job_ids": [relabeled.id]})
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert post(client, **request | {"seed": 6}).json()["id"] != first.json()["id"]


def test_settings_that_cannot_change_the_entries_do_not_change_the_id(client, labeled, job):
    hard = post(client, job_ids=[job.id], soft=False, temperature=2.0).json()
    assert post(client, job_ids=[job.id, job.id], soft=False, temperature=0.5).json()["id"] == hard["id"]
    assert hard["params"]["temperature"] is None
    labeled_only = post(client, labeled_dataset_ids=[labeled]).json()
    assert (
        post(client, labeled_dataset_ids=[labeled], threshold=0.9, seed=3).json()["id"] == labeled_only["id"]
    )


def test_a_labeled_only_manifest_trains_the_first_teacher(client, labeled):
    response = post(client, labeled_dataset_ids=[labeled])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["totals"] == {
        "labeled": 4,
        "pseudo_unique": 0,
        "pseudo_with_copies": 0,
        "entries": 4,
        "samples": 4,
    }
    entries = client.get(f"/manifests/{body['id']}/entries").json()["data"]
    assert [(e["source"], e["target"], e["copies"], e["confidence"]) for e in entries] == [
        ("labeled", CAT, 1, None),
        ("labeled", CAT, 1, None),
        ("labeled", DOG, 1, None),
        ("labeled", EEL, 1, None),
    ]
    assert body["provenance"]["teacher_ids"] == [] and body["class_counts"]["cat"]["threshold"] is None


def test_soft_targets_follow_the_temperature(client, job):
    manifest = post(client, job_ids=[job.id], balance=False, temperature=2.0).json()
    entries = client.get(f"/manifests/{manifest['id']}/entries").json()["data"]
    first = next(e for e in entries if e["item_id"] == job.item_ids[0])
    stored = synthetic.distribution(CAT, 0.9, 3).astype(np.float16).astype(np.float64)
    sharpened = stored**0.5 / (stored**0.5).sum()
    assert first["target"] == pytest.approx(sharpened.tolist(), abs=1e-6)
    assert (first["source"], first["copies"], first["confidence"]) == ("pseudo", 1, 0.9)


def test_hard_targets_are_the_predicted_class(client, job):
    manifest = post(client, job_ids=[job.id], balance=False, soft=False).json()
    entries = client.get(f"/manifests/{manifest['id']}/entries").json()["data"]
    assert [e["target"] for e in entries] == [CAT, CAT, CAT, DOG, EEL]


def test_top_k_labels_spread_the_rest_mass_over_the_other_classes(client):
    names = [f"c{i}" for i in range(6)]
    teacher = synthetic.teacher(names, name="topk")
    job = synthetic.finished_job(teacher, [(2, 0.5)], full_distribution_max=4)  # keeps the top 3
    manifest = post(client, job_ids=[job.id], balance=False).json()
    target = client.get(f"/manifests/{manifest['id']}/entries").json()["data"][0]["target"]
    assert len(target) == 6 and sum(target) == pytest.approx(1.0, abs=1e-6)
    assert target[2] == pytest.approx(0.5, abs=1e-3)
    # Top 3: class 2 and the first two others (0.1 each); the rest 0.3 spread over three classes.
    assert target[3:] == pytest.approx([0.1] * 3, abs=1e-3) and target[:2] == pytest.approx(
        [0.1] * 2, abs=1e-3
    )


def test_entries_page_with_a_cursor_and_stream_as_jsonl_and_parquet(client, labeled, job, monkeypatch):
    manifest = post(client, labeled_dataset_ids=[labeled], job_ids=[job.id], target_per_class=2).json()
    url = f"/manifests/{manifest['id']}/entries"
    pages, cursor = [], None
    while True:
        page = client.get(url, params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        pages.append(page["data"])
        if (cursor := page["next_cursor"]) is None:
            break
    paged = [entry for page in pages for entry in page]
    assert len(pages) == 4 and len(paged) == manifest["totals"]["entries"] == 8
    assert [e["item_id"] for e in paged] == sorted(e["item_id"] for e in paged)

    lines = [json.loads(line) for line in client.get(url, params={"format": "jsonl"}).text.splitlines()]
    assert [{k: v for k, v in line.items() if k != "class_name"} for line in lines] == paged
    for line in lines:
        top = line["target"] if line["source"] == "labeled" else int(np.argmax(line["target"]))
        assert line["class_name"] == CLASSES[top]

    table = pq.read_table(io.BytesIO(client.get(url, params={"format": "parquet"}).content))
    # pages of 2, whole and for the share of odd item IDs: the same rows as one page
    monkeypatch.setattr("service.exports.manifests.PARQUET_PAGE_ROWS", 2)
    for part, parts in ((0, 1), (1, 2)):
        params = {"format": "parquet", "part": part, "parts": parts}
        paged_parquet = pq.ParquetFile(io.BytesIO(client.get(url, params=params).content))
        expected = [row for row in table.to_pylist() if row["item_id"] % parts == part]
        assert len(expected) >= 3 and paged_parquet.num_row_groups == math.ceil(len(expected) / 2)
        assert paged_parquet.read().to_pylist() == expected
    assert table.column_names == [
        "item_id",
        "uri",
        "source",
        "target_class",
        "class_name",
        "copies",
        "confidence",
        "target_indices",
        "target_values",
        "target_rest",
    ]
    rows = table.to_pylist()
    assert [(r["item_id"], r["uri"], r["source"], r["copies"]) for r in rows] == [
        (e["item_id"], e["uri"], e["source"], e["copies"]) for e in paged
    ]


def _dense_from_parquet(client, manifest: dict, **params) -> tuple[list[int], np.ndarray, pq.ParquetFile]:
    response = client.get(f"/manifests/{manifest['id']}/entries", params={"format": "parquet", **params})
    parquet = pq.ParquetFile(io.BytesIO(response.content))
    table = parquet.read()
    width = table.schema.field("target_indices").type.list_size
    indices = table["target_indices"].combine_chunks().flatten().to_numpy().reshape(-1, width)
    values = table["target_values"].combine_chunks().flatten().to_numpy().reshape(-1, width)
    rest = table["target_rest"].to_numpy()
    dense = targets.dense(indices, values, rest, len(manifest["classes"]))
    return table["item_id"].to_pylist(), dense, parquet


def _dense_from_json(client, manifest: dict) -> list[list[float]]:
    entries = client.get(f"/manifests/{manifest['id']}/entries", params={"limit": 1000}).json()["data"]
    num_classes = len(manifest["classes"])
    return [
        e["target"] if isinstance(e["target"], list) else np.eye(num_classes)[e["target"]].tolist()
        for e in entries
    ]


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("soft, whole distributions", {"temperature": 2.0}),
        ("hard", {"soft": False}),
        ("labeled only", {"job_ids": []}),
    ],
)
def test_parquet_sparse_targets_rebuild_exactly_the_json_targets(client, labeled, job, kind, body):
    manifest = post(
        client, **({"labeled_dataset_ids": [labeled], "job_ids": [job.id], "balance": False} | body)
    ).json()
    item_ids, dense, parquet = _dense_from_parquet(client, manifest)
    assert dense.dtype == np.float32 and len(item_ids) == manifest["totals"]["entries"]
    assert dense.tolist() == _dense_from_json(client, manifest)
    metadata = parquet.metadata.metadata
    assert metadata[b"nst.manifest_id"].decode() == manifest["id"]
    assert json.loads(metadata[b"nst.classes"]) == CLASSES
    assert metadata[b"nst.entries"] == str(len(item_ids)).encode()


def test_parquet_top_k_targets_rebuild_exactly_the_json_targets(client):
    names = [f"c{i}" for i in range(6)]
    teacher = synthetic.teacher(names, name="topk")
    job = synthetic.finished_job(teacher, [(2, 0.5), (4, 0.7), (0, 0.9)], full_distribution_max=4)
    manifest = post(client, job_ids=[job.id], balance=False, temperature=0.5).json()
    _, dense, parquet = _dense_from_parquet(client, manifest)
    assert parquet.schema_arrow.field("target_indices").type.list_size == 3  # the job's top 3
    assert dense.tolist() == _dense_from_json(client, manifest)


def test_parquet_parts_are_disjoint_cover_the_manifest_and_carry_their_count(client, labeled, job):
    manifest = post(client, labeled_dataset_ids=[labeled], job_ids=[job.id], balance=False).json()
    whole, dense, _ = _dense_from_parquet(client, manifest)
    parts = []
    for part in range(3):
        url = f"/manifests/{manifest['id']}/entries"
        response = client.get(url, params={"format": "parquet", "part": part, "parts": 3})
        assert response.headers["x-manifest-id"] == manifest["id"]
        ids, part_dense, _ = _dense_from_parquet(client, manifest, part=part, parts=3)
        assert response.headers["x-manifest-entries"] == str(len(ids))
        assert part_dense.tolist() == [dense[whole.index(i)].tolist() for i in ids]
        parts.append(set(ids))
    assert sum(map(len, parts)) == len(set().union(*parts)) == len(whole)
    assert set().union(*parts) == set(whole)


@pytest.mark.parametrize(("params", "field"), [({"part": 3, "parts": 3}, "part"), ({"parts": 0}, "parts")])
def test_a_part_outside_the_parts_is_422_naming_the_field(client, job, params, field):
    manifest = post(client, job_ids=[job.id]).json()
    response = client.get(f"/manifests/{manifest['id']}/entries", params={"format": "parquet", **params})
    assert response.status_code == 422 and field in response.text


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"part": 1, "parts": 2}, "part"),  # JSON pages are not shares
        ({"format": "jsonl", "parts": 2}, "parts"),
        ({"format": "jsonl", "cursor": 4}, "cursor"),
        ({"format": "jsonl", "limit": 1}, "limit"),  # would stream every entry
        ({"format": "parquet", "limit": 1}, "limit"),
    ],
)
def test_a_parameter_the_format_ignores_is_422_naming_it(client, job, params, field):
    manifest = post(client, job_ids=[job.id]).json()
    response = client.get(f"/manifests/{manifest['id']}/entries", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{field}: format=")
    labels = client.get(f"/jobs/{job.id}/labels", params={k: v for k, v in params.items() if "part" not in k})
    if "part" not in field:
        assert labels.status_code == 422 and labels.json()["detail"].startswith(f"{field}: format=")


def test_a_small_temperature_sharpens_without_underflow():
    """p^(1/T) for a flat label over 4,000 classes: every power underflows float64 at T = 0.01."""
    from service.exports.manifests import sparse_targets

    stored = np.full(4000, 1 / 4000)
    stored[7] = 2 / 4000
    probs = (stored / stored.sum()).astype(np.float16).tobytes()
    _, values, rest = sparse_targets(
        [("pseudo", 7, probs, None, None)], soft=True, num_classes=4000, temperature=0.01, width=4000
    )
    assert np.isfinite(values).all() and values[0, 7] == pytest.approx(1.0) and rest[0] == 0
    assert values.sum() == pytest.approx(1.0)


def test_the_client_creates_reads_and_pages_manifests(client, labeled, job):
    with in_process_client(client) as nst:
        created = nst.create_manifest(labeled_dataset_ids=[labeled], job_ids=[job.id], soft=False)
        assert nst.manifest(created["id"]) == created
        assert [m["id"] for m in nst.manifests()] == [created["id"]]
        entries = list(nst.manifest_entries(created["id"], page_size=3))
        assert len(entries) == created["totals"]["entries"]


def test_a_dataset_in_a_manifest_cannot_be_deleted(client, labeled):
    manifest = post(client, labeled_dataset_ids=[labeled]).json()
    response = client.delete(f"/datasets/{labeled}")
    assert response.status_code == 409 and manifest["id"] in response.json()["detail"]


BAD_REQUESTS = [
    ({"job_ids": [999]}, "job_ids: unknown job 999"),
    ({"labeled_dataset_ids": [999]}, "labeled_dataset_ids: unknown dataset 999"),
    ({"threshold": 1.5}, "threshold"),
    ({"threshold": -0.1}, "threshold"),
    ({"target_per_class": 0}, "target_per_class"),
    ({"target_per_class": -3}, "target_per_class"),
    ({"job_ids": [], "labeled_dataset_ids": []}, "labeled_dataset_ids: give labeled datasets"),
    ({"balance": False, "per_class_thresholds": True}, "per_class_thresholds: needs balance"),
    # p^(1/T) underflows for any label below ~0.5 at T = 0.001
    ({"temperature": 0.001}, "temperature"),
    # each class's target and copies are INTEGER columns; one class may take them all
    (
        {"target_per_class": 2**31 - 1, "target_mode": "labeled_distribution"},
        "target_per_class: 2147483647 for each of 3 classes is 6,442,450,941 samples",
    ),
    ({"target_per_class": 2**30}, "a manifest holds at most 2,147,483,647"),
    # strict bodies: no string for an ID or a number, no 0 for a flag
    ({"job_ids": ["1"]}, "job_ids"),
    ({"threshold": "0.2"}, "threshold"),
    ({"balance": 0}, "balance"),
    ({"soft": "off"}, "soft"),
    # nothing at or above it and no labeled set: an empty manifest trains nothing
    ({"labeled_dataset_ids": [], "threshold": 0.99}, "threshold: no pseudo label of job(s) ["),
]


def test_bad_manifest_requests_are_422_naming_the_problem(client, labeled, job):
    for change, message in BAD_REQUESTS:  # one database for all: each one costs a setup
        response = post(client, **{"labeled_dataset_ids": [labeled], "job_ids": [job.id], **change})
        assert response.status_code == 422, (change, response.text)
        assert message in str(response.json()["detail"]), change
    assert _manifest_count(client) == 0


def test_an_unfinished_job_is_a_conflict(client, teacher):
    running = synthetic.finished_job(teacher, [(CAT, 0.9)], state="running")
    response = post(client, job_ids=[running.id])
    assert response.status_code == 409
    assert response.json()["detail"] == f"job_ids: job {running.id} is running, not succeeded"
    assert _manifest_count(client) == 0


def test_class_lists_that_differ_name_both_lists(client, job):
    other = synthetic.labeled_dataset(["cat", "eel", "dog"], [0, 1])
    response = post(client, labeled_dataset_ids=[other], job_ids=[job.id])
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("job_ids: class lists differ (first difference at index 1)")
    assert "['cat', 'dog', 'eel']" in detail and "['cat', 'eel', 'dog']" in detail
    assert _manifest_count(client) == 0


def test_only_labeled_train_splits_are_labeled_inputs(client, job):
    val = synthetic.labeled_dataset(CLASSES, [0, 1], split="val")
    response = post(client, labeled_dataset_ids=[val])
    assert response.status_code == 422 and "labeled (val split)" in response.json()["detail"]
    pool = post(client, labeled_dataset_ids=[job.dataset_id])
    assert pool.status_code == 422 and "is unlabeled" in pool.json()["detail"]


def test_a_job_over_a_held_out_split_is_no_pseudo_input(client, teacher, labeled):
    """A probe job (the teacher labeling a val or test split) must not put those images into a
    student's training set."""
    for split in ("val", "test"):
        held_out = synthetic.labeled_dataset(CLASSES, [CAT, DOG], split=split, name=split)
        probe = synthetic.finished_job(teacher, [(CAT, 0.9), (DOG, 0.8)], dataset_id=held_out)
        response = post(client, labeled_dataset_ids=[labeled], job_ids=[probe.id])
        assert response.status_code == 422
        assert response.json()["detail"] == (
            f"job_ids: job {probe.id} labeled dataset {held_out}, a {split} split held out from training "
            "(a probe): its images would train the student they are to score"
        )
    assert _manifest_count(client) == 0


def test_a_negative_zero_is_the_same_manifest_as_zero(client, labeled, job):
    zero = post(client, labeled_dataset_ids=[labeled], job_ids=[job.id], threshold=0.0)
    negative_zero = client.post(
        "/manifests",
        content=f'{{"labeled_dataset_ids": [{labeled}], "job_ids": [{job.id}], "threshold": -0.0}}',
        headers={"content-type": "application/json"},
    )
    assert (zero.status_code, negative_zero.status_code) == (201, 200)
    assert negative_zero.json()["id"] == zero.json()["id"]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_stream_holds_no_connection_of_the_request(client, labeled, job, monkeypatch, fmt):
    """The request's session goes back to the pool when the stream starts, not after its last
    byte, and each page is read in a session of its own, so between pages it holds none."""
    from service.api.routes import manifests as route
    from service.core.db import get_engine
    from service.exports import manifests as exports

    manifest = post(client, labeled_dataset_ids=[labeled], job_ids=[job.id]).json()
    held = []

    def counting(real):
        def stream(*args):
            held.append(get_engine().pool.checkedout())  # as the stream starts, before it reads
            for chunk in real(*args):
                held.append(get_engine().pool.checkedout())
                yield chunk

        return stream

    name = {"jsonl": "entries_jsonl", "parquet": "entries_parquet"}[fmt]
    monkeypatch.setattr(route, name, counting(getattr(exports, name)))
    monkeypatch.setattr(exports, "PARQUET_PAGE_ROWS", 2)
    response = client.get(f"/manifests/{manifest['id']}/entries", params={"format": fmt})
    assert response.status_code == 200
    assert set(held) == {0}
    if fmt == "parquet":
        assert len(held) > 4  # four pages of two, then the footer


def test_pages_of_soft_targets_over_many_classes_are_cut_to_a_size(client):
    names = [f"c{i}" for i in range(2000)]
    job = synthetic.finished_job(synthetic.teacher(names), [(i % 2000, 0.9) for i in range(130)])
    manifest = post(client, job_ids=[job.id], threshold=0.0, balance=False).json()
    url = f"/manifests/{manifest['id']}/entries"
    first = client.get(url, params={"limit": 1000}).json()
    assert len(first["data"]) == 125 and first["next_cursor"] is not None  # 250,000 values a page
    rest = client.get(url, params={"limit": 1000, "cursor": first["next_cursor"]}).json()
    assert len(rest["data"]) == 5 and rest["next_cursor"] is None
    lines = client.get(url, params={"format": "jsonl"}).text.splitlines()
    assert [json.loads(line)["item_id"] for line in lines] == [
        e["item_id"] for e in first["data"] + rest["data"]
    ]


def test_a_failure_midway_leaves_no_manifest_behind(client, labeled, job, monkeypatch):
    from service.manifests import selection

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(selection, "insert_pseudo_entries", broken)
    with pytest.raises(RuntimeError):
        post(client, labeled_dataset_ids=[labeled], job_ids=[job.id])
    assert _manifest_count(client) == 0
    monkeypatch.undo()
    assert post(client, labeled_dataset_ids=[labeled], job_ids=[job.id]).status_code == 201


def test_unknown_manifest_is_404(client):
    for path in ("/manifests/abc", "/manifests/abc/entries"):
        response = client.get(path)
        assert response.status_code == 404 and "manifest abc not found" in response.json()["detail"]


def test_a_manifest_list_page_shows_each_as_its_own_page_does_in_as_few_queries(client):
    from service.core.db import get_engine
    from tests.utils.statements import recorded

    teacher = synthetic.teacher(["a", "b"])
    job = synthetic.finished_job(teacher, [(0, 0.9), (1, 0.4), (1, 0.8)])
    other = synthetic.finished_job(synthetic.teacher(["a", "b"], name="other"), [(0, 0.6)])
    labeled = synthetic.labeled_dataset(["a", "b"], [0, 1], name="few")

    def listed() -> tuple[list[dict], int]:
        with recorded(get_engine()) as statements:
            page = client.get("/manifests").json()["data"]
        return page, len(statements)

    def build(jobs: list, threshold: float, labeled_ids: list[int]) -> None:
        body = {"job_ids": [j.id for j in jobs], "threshold": threshold, "labeled_dataset_ids": labeled_ids}
        assert client.post("/manifests", json=body).status_code == 201

    build([job], 0.5, [])
    _, one = listed()
    build([other], 0.3, [labeled])
    build([job, other], 0.7, [])
    page, three = listed()
    assert three == one and len(page) == 3
    assert [(m["totals"]["labeled"], m["totals"]["pseudo_unique"]) for m in page] == [(0, 2), (2, 1), (0, 2)]
    assert [m["provenance"] for m in page] == [
        {
            "teacher_ids": [job.teacher_id],
            "job_ids": [job.id],
            "labeled_dataset_ids": [],
            "unlabeled_dataset_ids": [job.dataset_id],
        },
        {
            "teacher_ids": [other.teacher_id],
            "job_ids": [other.id],
            "labeled_dataset_ids": [labeled],
            "unlabeled_dataset_ids": [other.dataset_id],
        },
        {
            "teacher_ids": sorted([job.teacher_id, other.teacher_id]),
            "job_ids": [job.id, other.id],
            "labeled_dataset_ids": [],
            "unlabeled_dataset_ids": sorted([job.dataset_id, other.dataset_id]),
        },
    ]
    for manifest in page:
        assert manifest == client.get(f"/manifests/{manifest['id']}").json()


def _manifest_rows(key: int) -> list[int]:
    from sqlalchemy import func, select

    from service.core.db import session_scope
    from service.models import ManifestClass, ManifestEntry, ManifestInput

    with session_scope() as session:
        return [
            session.scalar(select(func.count()).where(model.manifest_key == key))
            for model in (ManifestEntry, ManifestInput, ManifestClass)
        ]


def test_a_manifest_is_deleted_with_its_entries_and_the_same_request_builds_it_again(client, labeled, job):
    from service.core.db import session_scope
    from service.manifests.reads import by_id

    body = {"labeled_dataset_ids": [labeled], "job_ids": [job.id], "threshold": 0.3}
    manifest = post(client, **body).json()
    with session_scope() as session:
        key = by_id(session, manifest["id"]).key
    assert all(_manifest_rows(key))
    assert client.delete(f"/manifests/{manifest['id']}").status_code == 204
    assert _manifest_rows(key) == [0, 0, 0]
    assert client.get(f"/manifests/{manifest['id']}").status_code == 404
    assert client.delete(f"/manifests/{manifest['id']}").status_code == 404
    again = post(client, **body)
    assert again.status_code == 201 and again.json() == manifest | {"created_at": again.json()["created_at"]}


def test_a_manifest_a_teacher_was_trained_on_is_kept(client, labeled, job):
    from service.core.db import session_scope
    from service.models import Teacher

    manifest = post(client, labeled_dataset_ids=[labeled], job_ids=[job.id]).json()
    student = synthetic.teacher(CLASSES, name="student")
    with session_scope() as session:
        session.get(Teacher, student).manifest_id = manifest["id"]
    response = client.delete(f"/manifests/{manifest['id']}")
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"manifest {manifest['id']} trained teacher(s) {student[:12]}, whose lineage names it; "
        "delete those first"
    )
    assert client.delete(f"/teachers/{student}").status_code == 204
    assert client.delete(f"/manifests/{manifest['id']}").status_code == 204


def test_the_cli_deletes_a_manifest_by_a_prefix_of_its_id(client, labeled, monkeypatch):
    from click.testing import CliRunner

    from cli.main import cli

    monkeypatch.setattr("cli.main.Client", lambda *_args, **_kwargs: in_process_client(client))
    manifest = post(client, labeled_dataset_ids=[labeled]).json()
    result = CliRunner().invoke(cli, ["manifests", "delete", manifest["id"][:10]])
    assert (result.exit_code, result.output) == (0, f"deleted manifest {manifest['id']}\n")
    assert _manifest_count(client) == 0
