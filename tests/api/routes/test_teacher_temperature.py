import pytest

from tests.utils import synthetic

CLASSES = ["cat", "dog", "eel"]


@pytest.fixture
def teacher(client):
    return synthetic.teacher(CLASSES)


@pytest.fixture
def pool(client):
    return synthetic.finished_job(synthetic.teacher(CLASSES, name="other"), [(0, 0.9)]).dataset_id


@pytest.mark.parametrize("bad", [0, -1.0, 1e-300, 0.009, 100.5, "warm", "1.5"])
def test_temperature_outside_its_range_is_422(client, teacher, bad):
    response = client.put(f"/teachers/{teacher}/temperature", json={"temperature": bad})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:2] == ["body", "temperature"]
    assert client.get(f"/teachers/{teacher}").json()["calibrated_temperature"] is None


def test_a_calibrated_temperature_is_stored_and_labels_a_job(client, teacher, pool):
    assert client.get(f"/teachers/{teacher}").json()["calibrated_temperature"] is None
    body = {"teacher_id": teacher, "dataset_id": pool, "top_k": 3, "temperature": "calibrated"}
    refused = client.post("/jobs", json=body)
    assert refused.status_code == 422
    assert refused.json()["detail"].startswith(f"temperature: teacher {teacher} has no calibrated")

    stored = client.put(f"/teachers/{teacher}/temperature", json={"temperature": 1.75})
    assert stored.status_code == 200 and stored.json()["calibrated_temperature"] == 1.75
    job = client.post("/jobs", json=body)
    assert job.status_code == 201 and job.json()["temperature"] == 1.75
    explicit = client.post("/jobs", json={**body, "temperature": 2.5})
    assert explicit.json()["temperature"] == 2.5

    cleared = client.put(f"/teachers/{teacher}/temperature", json={"temperature": None})
    assert cleared.json()["calibrated_temperature"] is None
    assert client.post("/jobs", json=body).status_code == 422
    assert client.put(f"/teachers/{'0' * 64}/temperature", json={"temperature": 1.0}).status_code == 404


def test_a_calibrated_temperature_stored_outside_the_bounds_is_422_not_a_job(client, teacher, pool):
    """The API took (0, 100] before [0.01, 100]: an older row must not label with T = 0.001."""
    from service.core.db import session_scope
    from service.models import Teacher

    with session_scope() as session:
        session.get(Teacher, teacher).calibrated_temperature = 0.001
    body = {"teacher_id": teacher, "dataset_id": pool, "top_k": 3, "temperature": "calibrated"}
    response = client.post("/jobs", json=body)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(f"temperature: teacher {teacher}'s calibrated temperature")
    assert client.get("/jobs").json()["count"] == 1  # the pool fixture's finished job only
