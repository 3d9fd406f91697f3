import pytest

from tests.utils import synthetic

CLASSES = ["cat", "dog", "eel"]
CAT, DOG, EEL = range(3)

pytestmark = pytest.mark.usefixtures("backend")

# (predicted, confidence) per item; the true labels of the labeled dataset below.
LABELS = [(CAT, 0.95), (CAT, 0.5), (DOG, 0.9), (DOG, 0.3), (EEL, 0.7), (CAT, 0.5), (EEL, 0.2)]
TRUTH = [CAT, DOG, DOG, EEL, EEL, CAT, CAT]


@pytest.fixture
def job(client):
    teacher = synthetic.teacher(CLASSES)
    dataset = synthetic.labeled_dataset(CLASSES, TRUTH, split="val", name="probe")
    return synthetic.finished_job(teacher, LABELS, dataset_id=dataset)


def _browse(client, job, **params):
    response = client.get(f"/jobs/{job.id}/labels/browse", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _all(client, job, **params):
    pages, cursor = [], None
    while True:
        page = _browse(client, job, **params, **({"cursor": cursor} if cursor else {}))
        pages.append(page)
        if (cursor := page["next_cursor"]) is None:
            return [tile for p in pages for tile in p["data"]], pages


def test_labels_sort_by_confidence_and_page_by_cursor_without_gaps(client, job):
    tiles, pages = _all(client, job, limit=2)
    assert len(pages) == 4 and all(p["count"] == 7 for p in pages)
    confidences = [t["confidence"] for t in tiles]
    assert confidences == sorted(confidences, reverse=True)
    assert sorted(t["item_id"] for t in tiles) == job.item_ids
    # The two 0.5 labels tie: item order breaks it, across the page boundary too.
    ties = [t["item_id"] for t in tiles if t["confidence"] == 0.5]
    assert ties == sorted(ties)
    ascending, _ = _all(client, job, limit=3, order="confidence_asc")
    expected = sorted(zip(job.item_ids, LABELS, strict=True), key=lambda pair: (pair[1][1], pair[0]))
    assert [t["item_id"] for t in ascending] == [item for item, _ in expected]
    by_item, _ = _all(client, job, limit=3, order="item")
    assert [t["item_id"] for t in by_item] == job.item_ids


def test_class_and_confidence_filters_select_exactly_the_matching_labels(client, job):
    page = _browse(client, job, class_index=CAT, min_confidence=0.5, max_confidence=0.9)
    expected = [i for i, (c, q) in zip(job.item_ids, LABELS, strict=True) if c == CAT and 0.5 <= q <= 0.9]
    assert page["count"] == 2 and sorted(t["item_id"] for t in page["data"]) == expected
    assert all(t["class_index"] == CAT for t in page["data"])


def test_tiles_carry_top_k_entropy_and_truth(client, job):
    page = _browse(client, job, order="item", top_k=2)
    assert page["classes"] == CLASSES and page["has_truth"] is True
    first = page["data"][0]
    assert first["top"][0] == {"index": CAT, "probability": pytest.approx(0.95, abs=1e-3)}
    assert len(first["top"]) == 2 and first["entropy"] == 0.0
    assert [t["true_class"] for t in page["data"]] == TRUTH
    assert [t["correct"] for t in page["data"]] == [c == t for (c, _), t in zip(LABELS, TRUTH, strict=True)]
    wrong = _browse(client, job, correct=False, order="item")
    assert [t["item_id"] for t in wrong["data"]] == [
        i for i, (c, _), t in zip(job.item_ids, LABELS, TRUTH, strict=True) if c != t
    ]


def test_truth_follows_class_names_not_indices(client):
    teacher = synthetic.teacher(CLASSES)
    dataset = synthetic.labeled_dataset(["eel", "cat", "dog"], [1, 2, 0], split="val", name="reordered")
    job = synthetic.finished_job(teacher, [(CAT, 0.9), (DOG, 0.9), (CAT, 0.9)], dataset_id=dataset)
    page = _browse(client, job, order="item")
    assert [t["true_class"] for t in page["data"]] == [CAT, DOG, EEL]
    assert [t["correct"] for t in page["data"]] == [True, True, False]


def test_a_pool_without_labels_has_no_truth(client):
    job = synthetic.finished_job(synthetic.teacher(CLASSES), [(CAT, 0.9)])
    page = _browse(client, job)
    assert page["has_truth"] is False and page["data"][0]["correct"] is None
    response = client.get(f"/jobs/{job.id}/labels/browse", params={"correct": "false"})
    assert response.status_code == 422 and response.json()["detail"].startswith("correct:")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"min_confidence": 0.8, "max_confidence": 0.2}, "min_confidence"),
        ({"class_index": 3}, "class_index"),
        ({"cursor": "nonsense"}, "cursor"),
        ({"order": "confidence_asc", "cursor": "12"}, "cursor"),
        # Parsed, but no row could have handed them out: past BIGINT, or not a number to compare.
        ({"order": "item", "cursor": "9" * 30}, "cursor"),
        ({"order": "item", "cursor": "-1"}, "cursor"),
        ({"order": "confidence_desc", "cursor": "0.5:" + "9" * 30}, "cursor"),
        ({"order": "confidence_desc", "cursor": "nan:1"}, "cursor"),
        ({"order": "confidence_asc", "cursor": "inf:1"}, "cursor"),
        ({"order": "confidence_asc", "cursor": "1e999:1"}, "cursor"),
        ({"order": "confidence_asc", "cursor": "1e39:1"}, "cursor"),  # PostgreSQL's REAL overflows
        ({"order": "confidence_desc", "cursor": "1e-50:1"}, "cursor"),  # and underflows
    ],
)
def test_bad_filters_are_422_naming_the_parameter(client, job, params, field):
    response = client.get(f"/jobs/{job.id}/labels/browse", params=params)
    assert response.status_code == 422 and response.json()["detail"].startswith(f"{field}:")


@pytest.mark.parametrize(
    "params", [{"min_confidence": 1.5}, {"limit": 0}, {"limit": 501}, {"order": "random"}, {"top_k": 0}]
)
def test_out_of_range_parameters_are_422(client, job, params):
    response = client.get(f"/jobs/{job.id}/labels/browse", params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", next(iter(params))]


def test_unknown_job_or_manifest_is_404(client):
    assert client.get("/jobs/9/labels/browse").status_code == 404
    assert client.get(f"/manifests/{'0' * 64}/entries/browse").status_code == 404


def test_manifest_entries_browse_as_the_student_trains_on_them(client):
    teacher = synthetic.teacher(CLASSES)
    labeled = synthetic.labeled_dataset(CLASSES, [CAT, DOG, EEL], name="train")
    job = synthetic.finished_job(teacher, [(CAT, 0.9), (DOG, 0.6), (EEL, 0.2), (DOG, 0.95)])
    body = {"labeled_dataset_ids": [labeled], "job_ids": [job.id], "threshold": 0.5, "balance": False}
    manifest = client.post("/manifests", json=body).json()
    url = f"/manifests/{manifest['id']}/entries/browse"
    every = client.get(url, params={"limit": 500}).json()
    assert every["count"] == manifest["totals"]["entries"] == 6
    # By confidence, highest first; labeled entries (no confidence) last.
    assert [t["confidence"] for t in every["data"]][:3] == pytest.approx([0.95, 0.9, 0.6], abs=1e-6)
    assert [t["source"] for t in every["data"]] == ["pseudo"] * 3 + ["labeled"] * 3
    pseudo = every["data"][0]
    assert pseudo["job_id"] == job.id and pseudo["top"][0]["index"] == DOG and pseudo["copies"] == 1
    labeled_tile = every["data"][-1]
    assert labeled_tile["top"] == [] and labeled_tile["correct"] is True
    dogs = client.get(url, params={"class_index": DOG, "source": "pseudo"}).json()
    assert [t["confidence"] for t in dogs["data"]] == pytest.approx([0.95, 0.6], abs=1e-6)
    confident = client.get(url, params={"min_confidence": 0.7, "order": "confidence_asc"}).json()
    assert [t["confidence"] for t in confident["data"]] == pytest.approx([0.9, 0.95], abs=1e-6)
