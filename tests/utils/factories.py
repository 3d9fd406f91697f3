"""Build registry rows through the real API (in-process), the way a user would."""

from __future__ import annotations

import json
from pathlib import Path

from workers.tasks import validate_teacher


def unlabeled_dataset(client, folder: Path, name: str = "pool") -> dict:
    response = client.post("/datasets", json={"name": name, "kind": "unlabeled", "path": str(folder)})
    assert response.status_code == 201, response.text
    return response.json()


def ready_teacher(client, path: Path, metadata: dict | None = None) -> dict:
    """Upload a teacher and run the validation task in-process, as a worker would."""
    data = {"metadata": json.dumps(metadata)} if metadata else {}
    with path.open("rb") as handle:
        response = client.post("/teachers/upload", files={"file": (path.name, handle)}, data=data)
    assert response.status_code in (200, 201), response.text
    validate_teacher(response.json()["id"])
    return client.get(f"/teachers/{response.json()['id']}").json()


def job(client, teacher: dict, dataset: dict, **options) -> dict:
    response = client.post(
        "/jobs", json={"teacher_id": teacher["id"], "dataset_id": dataset["id"], **options}
    )
    assert response.status_code == 201, response.text
    return response.json()
