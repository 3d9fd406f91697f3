import pytest

from tests.utils import synthetic

CLASSES = ["cat", "dog", "eel"]
CAT, DOG, EEL = range(3)

pytestmark = pytest.mark.usefixtures("backend")  # first, so that the app opens the right database

TRUTH = [CAT, CAT, DOG, DOG, EEL, CAT]
# (predicted, confidence): right, wrong, right, right, wrong, right
LABELS = [(CAT, 0.9), (DOG, 0.8), (DOG, 0.6), (DOG, 0.3), (CAT, 0.5), (CAT, 0.2)]


def _counts(points):
    return [(p["threshold"], p["kept"], p["right"]) for p in points]


@pytest.mark.parametrize("order", [CLASSES, ["eel", "dog", "cat"]])
def test_quality_counts_kept_and_right_labels_per_threshold_and_class(client, order):
    teacher = synthetic.teacher(CLASSES)
    truth = [order.index(CLASSES[label]) for label in TRUTH]  # the probe's own class order
    probe = synthetic.labeled_dataset(order, truth, split="test", name="probe")
    job = synthetic.finished_job(teacher, LABELS, dataset_id=probe)
    quality = client.get(f"/jobs/{job.id}/quality", params={"thresholds": "0.7,0,0.5"}).json()
    assert quality["labels"] == 6
    assert _counts(quality["overall"]) == [(0.0, 6, 4), (0.5, 4, 2), (0.7, 2, 1)]
    first = quality["overall"][0]
    assert first["coverage"] == 1.0 and first["precision"] == pytest.approx(4 / 6)
    assert quality["overall"][1]["coverage"] == pytest.approx(4 / 6)
    cat, dog, eel = (quality["classes"][name] for name in CLASSES)
    assert cat["labels"] == dog["labels"] == 3
    assert _counts(cat["points"]) == [(0.0, 3, 2), (0.5, 2, 1), (0.7, 1, 1)]
    assert _counts(dog["points"]) == [(0.0, 3, 2), (0.5, 2, 1), (0.7, 1, 0)]
    assert dog["points"][2]["precision"] == 0.0
    assert eel["labels"] == 0 and eel["points"][0]["coverage"] is None
    assert eel["points"][0]["precision"] is None


def test_a_probe_class_the_teacher_lacks_is_never_right(client):
    teacher = synthetic.teacher(CLASSES)
    probe = synthetic.labeled_dataset(["fox", "cat"], [0, 1, 0], split="test", name="probe")
    job = synthetic.finished_job(teacher, [(CAT, 0.9), (CAT, 0.9), (EEL, 0.9)], dataset_id=probe)
    quality = client.get(f"/jobs/{job.id}/quality", params={"thresholds": "0"}).json()
    assert _counts(quality["overall"]) == [(0.0, 3, 1)]
    assert _counts(quality["classes"]["cat"]["points"]) == [(0.0, 2, 1)]
    assert _counts(quality["classes"]["eel"]["points"]) == [(0.0, 1, 0)]


def test_quality_needs_a_job_over_a_labeled_dataset_and_valid_thresholds(client):
    teacher = synthetic.teacher(CLASSES)
    pool_job = synthetic.finished_job(teacher, LABELS)
    response = client.get(f"/jobs/{pool_job.id}/quality")
    assert response.status_code == 422 and "unlabeled" in response.json()["detail"]
    probe = synthetic.labeled_dataset(CLASSES, TRUTH, split="test", name="probe")
    job = synthetic.finished_job(teacher, LABELS, dataset_id=probe)
    for bad, message in [("0.5,x", "not a comma-separated"), ("1.5", "outside [0, 1]")]:
        response = client.get(f"/jobs/{job.id}/quality", params={"thresholds": bad})
        assert response.status_code == 422 and response.json()["detail"].startswith("thresholds: ")
        assert message in response.json()["detail"]
    assert client.get("/jobs/9999/quality").status_code == 404
