import pytest

from tests.utils import synthetic

CLASSES = ["cat", "dog", "eel"]
CAT, DOG, EEL = range(3)

pytestmark = pytest.mark.usefixtures("backend")

BEFORE = [(CAT, 0.9), (CAT, 0.8), (DOG, 0.7), (DOG, 0.6), (EEL, 0.5), (CAT, 0.4)]
AFTER = [(CAT, 0.95), (DOG, 0.85), (CAT, 0.75), (DOG, 0.65), (DOG, 0.55), (DOG, 0.45)]


@pytest.fixture
def jobs(client):
    teacher, student = synthetic.teacher(CLASSES, "teacher"), synthetic.teacher(CLASSES, "student")
    first = synthetic.finished_job(teacher, BEFORE)
    return first, synthetic.finished_job(student, AFTER, dataset_id=first.dataset_id)


def test_comparison_counts_flips_from_class_to_class(client, jobs):
    first, second = jobs
    response = client.get(f"/jobs/{first.id}/compare/{second.id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["job_id"], body["other_job_id"], body["dataset_id"]) == (
        first.id,
        second.id,
        first.dataset_id,
    )
    assert (body["compared"], body["flipped"], body["flip_rate"]) == (6, 4, pytest.approx(4 / 6))
    assert body["classes"] == CLASSES
    assert body["changes"] == [
        {"from_class": CAT, "to_class": DOG, "count": 2},
        {"from_class": DOG, "to_class": CAT, "count": 1},
        {"from_class": EEL, "to_class": DOG, "count": 1},
    ]


def test_flips_list_the_changed_items_with_both_labels(client, jobs):
    first, second = jobs
    url = f"/jobs/{first.id}/compare/{second.id}/flips"
    flips = client.get(url).json()
    ids = first.item_ids
    assert [t["item_id"] for t in flips["data"]] == [ids[1], ids[2], ids[4], ids[5]]
    item = flips["data"][0]
    assert (item["from_class"], item["class_index"]) == (CAT, DOG)
    assert item["from_confidence"] == pytest.approx(0.8, abs=1e-6)
    assert item["confidence"] == pytest.approx(0.85, abs=1e-6)
    cat_to_dog = client.get(url, params={"from_class": CAT, "to_class": DOG, "limit": 1}).json()
    assert [t["item_id"] for t in cat_to_dog["data"]] == [ids[1]] and cat_to_dog["next_cursor"] == ids[5]
    rest = client.get(url, params={"from_class": CAT, "to_class": DOG, "cursor": ids[5]}).json()
    assert [t["item_id"] for t in rest["data"]] == [ids[5]] and rest["next_cursor"] is None


def test_the_same_job_twice_has_no_flips(client, jobs):
    first, _ = jobs
    body = client.get(f"/jobs/{first.id}/compare/{first.id}").json()
    assert (body["compared"], body["flipped"], body["changes"]) == (6, 0, [])


def test_jobs_over_different_datasets_cannot_be_compared(client, jobs):
    first, _ = jobs
    other = synthetic.finished_job(synthetic.teacher(CLASSES, "teacher"), [(CAT, 0.9)])
    response = client.get(f"/jobs/{first.id}/compare/{other.id}")
    assert response.status_code == 422
    assert (
        response.json()["detail"].startswith("other_job_id:") and "same dataset" in response.json()["detail"]
    )


def test_teachers_with_other_classes_cannot_be_compared(client, jobs):
    first, _ = jobs
    stranger = synthetic.teacher(["cat", "dog", "fox"], "stranger")
    other = synthetic.finished_job(stranger, BEFORE, dataset_id=first.dataset_id)
    response = client.get(f"/jobs/{first.id}/compare/{other.id}/flips")
    assert response.status_code == 422 and "class lists" in response.json()["detail"]


def test_unknown_job_is_404_and_bad_classes_422(client, jobs):
    first, second = jobs
    assert client.get(f"/jobs/{first.id}/compare/999").status_code == 404
    assert client.get(f"/jobs/999/compare/{first.id}/flips").status_code == 404
    bad = client.get(f"/jobs/{first.id}/compare/{second.id}/flips", params={"to_class": 3})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("to_class:")
