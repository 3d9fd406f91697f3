import pytest

from tests.utils import synthetic
from tests.utils.transport import in_process_client

CLASSES = ["cat", "dog", "eel"]
CAT, DOG, EEL = range(3)

pytestmark = pytest.mark.usefixtures("backend")  # first, so that the app opens the right database

LABELS = [(CAT, 0.95), (CAT, 1.0), (CAT, 0.1), (CAT, 0.0999), (DOG, 0.35), (DOG, 0.3), (DOG, 0.29)]


@pytest.fixture
def teacher(client):
    return synthetic.teacher(CLASSES)


@pytest.fixture
def job(teacher):
    return synthetic.finished_job(teacher, LABELS)


def test_stats_count_classes_above_the_threshold_with_histograms(client, job):
    stats = client.get(f"/jobs/{job.id}/stats", params={"threshold": 0.3}).json()
    assert (stats["job_id"], stats["state"], stats["threshold"]) == (job.id, "succeeded", 0.3)
    assert stats["bin_edges"] == [i / 10 for i in range(11)]
    cat, dog, eel = (stats["classes"][name] for name in CLASSES)
    assert (cat["index"], cat["pseudo_labeled"], cat["above_threshold"]) == (CAT, 4, 2)
    # 0.0999 is below 0.1, the float32 0.1 is just above it, and 1.0 belongs to the last bin.
    assert cat["histogram"] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert cat["mean_confidence"] == pytest.approx((0.95 + 1.0 + 0.1 + 0.0999) / 4, abs=1e-6)
    assert (dog["pseudo_labeled"], dog["above_threshold"]) == (3, 2)  # 0.3 is at the threshold
    assert dog["histogram"] == [0, 0, 1, 2, 0, 0, 0, 0, 0, 0]
    assert eel == {
        "index": EEL,
        "pseudo_labeled": 0,
        "above_threshold": 0,
        "mean_confidence": None,
        "histogram": [0] * 10,
        "labeled": None,
    }
    assert stats["totals"] == {"pseudo_labeled": 7, "above_threshold": 4, "labeled": None}
    assert stats["imbalance_ratio"] is None  # eel has none: unbounded
    assert stats["labeled_dataset_id"] is None and stats["labeled_imbalance_ratio"] is None

    higher = client.get(f"/jobs/{job.id}/stats", params={"threshold": 0.96}).json()
    assert [higher["classes"][n]["above_threshold"] for n in CLASSES] == [1, 0, 0]


def test_stats_compare_with_the_matching_labeled_dataset(client, job):
    synthetic.labeled_dataset(CLASSES, [CAT, DOG], name="old")
    synthetic.labeled_dataset(["dog", "cat", "eel"], [0], name="other order")
    synthetic.labeled_dataset(CLASSES, [CAT, CAT, DOG, EEL], split="val", name="val")
    newest = synthetic.labeled_dataset(CLASSES, [CAT, DOG, DOG, DOG, EEL], name="newest")
    stats = client.get(f"/jobs/{job.id}/stats").json()
    assert stats["labeled_dataset_id"] == newest
    assert [stats["classes"][n]["labeled"] for n in CLASSES] == [1, 3, 1]
    assert stats["totals"]["labeled"] == 5 and stats["labeled_imbalance_ratio"] == 3.0


def test_stats_take_any_labeled_dataset_with_the_same_classes(client, job):
    val = synthetic.labeled_dataset(CLASSES, [CAT, CAT, DOG, EEL], split="val")
    stats = client.get(f"/jobs/{job.id}/stats", params={"labeled_dataset_id": val}).json()
    assert [stats["classes"][n]["labeled"] for n in CLASSES] == [2, 1, 1]


def test_bad_stats_requests_name_the_problem(client, job):
    other = synthetic.labeled_dataset(["cat", "eel", "dog"], [0])
    mismatch = client.get(f"/jobs/{job.id}/stats", params={"labeled_dataset_id": other})
    assert mismatch.status_code == 422
    assert mismatch.json()["detail"] == (
        f"labeled_dataset_id: dataset {other} has classes ['cat', 'eel', 'dog'] "
        "but the job's teacher has ['cat', 'dog', 'eel']"
    )
    unknown = client.get(f"/jobs/{job.id}/stats", params={"labeled_dataset_id": 999})
    assert unknown.status_code == 422 and "unknown dataset 999" in unknown.json()["detail"]
    out_of_range = client.get(f"/jobs/{job.id}/stats", params={"threshold": 1.2})
    assert out_of_range.status_code == 422 and out_of_range.json()["detail"][0]["loc"] == [
        "query",
        "threshold",
    ]
    for path in ("/jobs/999/stats", "/jobs/999/stats/chart"):
        assert client.get(path).status_code == 404


def test_stats_of_a_running_job_cover_the_labels_so_far(client, teacher):
    running = synthetic.finished_job(teacher, [(EEL, 0.5)] * 3, state="running")
    stats = client.get(f"/jobs/{running.id}/stats").json()
    assert stats["state"] == "running" and stats["classes"]["eel"]["pseudo_labeled"] == 3


def test_the_chart_is_a_png_or_an_svg(client, job, tmp_path):
    synthetic.labeled_dataset(CLASSES, [CAT, DOG])
    png = client.get(f"/jobs/{job.id}/stats/chart")
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG\r\n\x1a\n")
    svg = client.get(f"/jobs/{job.id}/stats/chart", params={"format": "svg", "threshold": 0.5})
    assert svg.headers["content-type"] == "image/svg+xml" and b"<svg" in svg.content
    assert client.get(f"/jobs/{job.id}/stats/chart", params={"format": "gif"}).status_code == 422

    with in_process_client(client) as nst:
        assert nst.job_stats(job.id, threshold=0.5)["totals"]["above_threshold"] == 2
        path = nst.job_stats_chart(job.id, tmp_path / "stats.svg", fmt="svg")
        assert path.read_bytes().startswith(b"<?xml")


def test_a_chart_of_many_classes_shows_indices(client, backend):
    names = [f"class-{i}" for i in range(200)]
    teacher = synthetic.teacher(names, name="wide")
    job = synthetic.finished_job(teacher, [(i % 200, 0.5) for i in range(400)], full_distribution_max=10)
    svg = client.get(f"/jobs/{job.id}/stats/chart", params={"format": "svg"}).text
    assert "classes, by pseudo-labeled count" in svg and "class-17" not in svg
