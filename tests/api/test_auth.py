from fastapi.testclient import TestClient


def test_token_guards_every_endpoint_but_health(monkeypatch, enqueued):
    monkeypatch.setenv("NST_API_TOKEN", "s3cret")
    from service.main import create_app
    from tests.utils.env import clear_caches

    clear_caches()
    with TestClient(create_app()) as client:
        assert client.get("/health").status_code == 200
        for path in ("/datasets", "/teachers", "/jobs", "/jobs/1"):
            assert client.get(path).status_code == 401, path
        wrong = client.get("/datasets", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "API token" in wrong.json()["detail"]
        ok = client.get("/datasets", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_openapi_documents_the_resources(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/datasets", "/teachers", "/teachers/upload", "/jobs", "/jobs/{job_id}/labels"):
        assert path in paths
    assert client.get("/docs").status_code == 200
