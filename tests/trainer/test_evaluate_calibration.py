"""Fitting a teacher's temperature on a val split through the API, and evaluating with it."""

import pytest
import torch

from tests.utils.transport import in_process_client
from trainer.evaluate import NotAValidationSplit, calibrate_teacher, evaluate_teacher


def _labeled(client, folder, split: str) -> int:
    body = {"name": split, "kind": "labeled", "split": split, "path": str(folder)}
    response = client.post("/datasets", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_fitted_temperature_is_stored_and_lowers_the_val_nll(client, fmnist, teacher_file):
    with teacher_file.open("rb") as handle:
        teacher = client.post("/teachers/upload", files={"file": ("t.safetensors", handle)}).json()["id"]
    val, test = _labeled(client, fmnist / "test", "val"), _labeled(client, fmnist / "test", "test")
    nst = in_process_client(client)
    cpu = torch.device("cpu")
    with pytest.raises(NotAValidationSplit, match="is a test split"):
        calibrate_teacher(nst, teacher, test, device=cpu)

    fitted = calibrate_teacher(nst, teacher, val, device=cpu)
    assert fitted["count"] == 100 and fitted["nll"]["after"] < fitted["nll"]["before"]
    assert client.get(f"/teachers/{teacher}").json()["calibrated_temperature"] == pytest.approx(
        fitted["temperature"]
    )
    scores = evaluate_teacher(nst, teacher, test, device=cpu)
    at_one, at_fitted = scores["calibration"]
    assert (at_one["temperature"], at_fitted["temperature"]) == (1.0, pytest.approx(fitted["temperature"]))
    assert sum(b["count"] for b in at_one["bins"]) == scores["count"] == 100
