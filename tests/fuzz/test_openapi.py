"""Property-based requests from the whole OpenAPI document, against the app in-process.

Every operation gets valid and invalid inputs (schemathesis builds them from the schema), with
the API token and, in some cases, the IDs of real rows (a labeled dataset with real images, a
ready teacher, two jobs with labels, a manifest). Every response must be a documented status
(never a 5xx) whose body matches the documented schema, and an invalid input must be a 4xx.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.utils import synthetic
from tests.utils.env import clear_caches

pytestmark = pytest.mark.postgres

TOKEN = "fuzz-token"
# Per operation and generation mode: about 1,100 requests in all
# (NST_FUZZ_EXAMPLES=200 for a longer search).
EXAMPLES = int(os.environ.get("NST_FUZZ_EXAMPLES", "20"))
CLASSES = ["cat", "dog", "eel"]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def _image_folder(root: Path) -> Path:
    folder = root / "pets"
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (folder / name).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")
    return folder


@pytest.fixture
def app(pg_url, monkeypatch, enqueued):
    monkeypatch.setenv("NST_DATABASE_URL", pg_url)
    monkeypatch.setenv("NST_API_TOKEN", TOKEN)
    clear_caches()
    from service.main import create_app

    yield create_app()
    asgi.shutdown_lifespans()


def _real_ids(client) -> dict[str, list]:
    """Rows for the fuzz to find: path and query parameters take these values in some cases."""
    folder = _image_folder(Path(os.environ["NST_DATA_ROOTS"].split(",")[0]))
    dataset_ids = []
    # The jobs label "extra": a manifest's labeled input may not be a job's dataset, nor a held-out
    # split ("probe") a job's that the manifest trains on.
    for name, split in (("pets", "train"), ("extra", "train"), ("probe", "val")):
        body = {"name": name, "kind": "labeled", "split": split, "path": str(folder)}
        response = client.post("/datasets", json=body)
        assert response.status_code == 201, response.text
        dataset_ids.append(response.json()["id"])
    teacher_id = synthetic.teacher(CLASSES)
    labels = [(i % 3, 0.4 + 0.1 * i) for i in range(6)]
    first = synthetic.finished_job(teacher_id, labels, dataset_id=dataset_ids[1])
    second = synthetic.finished_job(teacher_id, labels[::-1], dataset_id=dataset_ids[1])
    manifest = client.post("/manifests", json={"labeled_dataset_ids": dataset_ids[:1], "job_ids": [first.id]})
    assert manifest.status_code == 201, manifest.text
    return {
        "dataset_id": dataset_ids,
        "labeled_dataset_id": dataset_ids,
        "teacher_id": [teacher_id],
        "job_id": [first.id, second.id],
        "other_job_id": [first.id, second.id],
        "manifest_id": [manifest.json()["id"]],
        "item_id": first.item_ids,
    }


def _example(mode, message: str, case) -> str:
    return f"{mode.value}: {message[:300]}\n  {case.as_curl_command()[:600]}"


def _fuzz(operation, mode, real: dict[str, list], found: dict[tuple, str], statuses: Counter) -> None:
    """Run ``operation`` on EXAMPLES cases; record each distinct failure (operation, check,
    status) with its first example, and go on, so that one run shows every failure."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def run(case, data):
        if mode is schemathesis.GenerationMode.POSITIVE:  # an invalid value stays invalid
            for container in (case.path_parameters, case.query):
                for name in list(container or {}):
                    if name in real and data.draw(st.booleans()):
                        container[name] = data.draw(st.sampled_from(real[name]))
        try:
            response = case.call()
        except Exception as exc:  # the app raised: a server would answer 500
            key = (operation.label, f"unhandled {type(exc).__name__}", 500)
            found.setdefault(key, _example(mode, str(exc), case))
            statuses[500] += 1
            return
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            for failure in group.exceptions:
                key = (operation.label, failure.title, response.status_code)
                found.setdefault(key, _example(mode, failure.message, case))
        except Failure as failure:
            key = (operation.label, failure.title, response.status_code)
            found.setdefault(key, _example(mode, failure.message, case))

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
        assert mode is schemathesis.GenerationMode.NEGATIVE


def test_every_operation_answers_documented_statuses_and_bodies(app):
    from fastapi.testclient import TestClient

    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        real = _real_ids(client)
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 26
    found: dict[tuple, str] = {}
    statuses: Counter = Counter()
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            _fuzz(operation, mode, real, found, statuses)
    report = "\n".join(f"{op} -> {code} {title}\n  {example}" for (op, title, code), example in found.items())
    print(f"{len(operations)} operations, {statuses.total()} requests {dict(sorted(statuses.items()))}")
    print(f"{len(found)} distinct failures, {sum(s >= 500 for _, _, s in found)} of them 5xx")
    assert not found, report
