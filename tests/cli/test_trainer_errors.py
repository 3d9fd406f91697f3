"""`nst train`, `nst evaluate` and `nst iterate`: a bad setting is a usage error before any
request, and a failure the user can act on is one Error: line, never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.utils.fake_service import PrefixService
from trainer.data import DatasetMismatch, ManifestMismatch


@pytest.fixture(autouse=True)
def service(monkeypatch):
    PrefixService.requests = 0
    monkeypatch.setattr("trainer.cli.Client", PrefixService)
    return PrefixService


def _invoke(*args: str, code: int):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, result.output + repr(result.exception)
    assert "Traceback" not in result.output and not isinstance(result.exception, ValueError)
    return result.output


TRAIN = ("train", "--manifest", "m" * 64, "--no-register", "--no-progress")


@pytest.mark.parametrize(
    ("option", "named"),
    [
        (["--batch-size", "0"], "--batch-size: must be 1 or more, not 0"),
        (["--architecture", "resnet_18"], "--architecture: must be a timm model name, not 'resnet_18'"),
        (["--dropout", "1.5"], "--dropout: must be 0 or more and below 1, not 1.5"),
        (["--workers", "-1"], "--workers: must be 0 (decode in the main process) or more, not -1"),
        (["--image-size", "0"], "--image-size: must be from 8 to 4096 (pixels), not 0"),
        (["--pseudo-ratio", "-1"], "--pseudo-ratio: must be 0 or more"),
        (["--crop-scale-min", "2"], "--crop-scale-min: must be above 0 and at most 1, not 2.0"),
    ],
)
def test_a_bad_train_setting_is_a_usage_error_before_any_request(service, option, named):
    output = _invoke(*TRAIN, *option, code=2)
    assert output.strip().splitlines()[-1].startswith(f"Error: {named}") and service.requests == 0


@pytest.mark.parametrize(
    "error",
    [
        ManifestMismatch("manifest m has 9 entries, the ranks received 8 in all"),
        DatasetMismatch("dataset 3 has classes ['a'], the model ['b']"),
    ],
)
def test_a_manifest_or_dataset_that_does_not_fit_is_one_error_line(monkeypatch, error):
    def train(_cfg):
        raise error

    monkeypatch.setattr("trainer.train.train", train)
    output = _invoke(*TRAIN, code=1)
    assert output.strip().splitlines() == [f"Error: {error}"]


def test_a_bad_device_for_evaluate_is_a_usage_error_before_any_request(service):
    output = _invoke("evaluate", "--teacher", "t", "--dataset", "1", "--device", "cpux", code=2)
    assert "Invalid value for '--device': 'cpux' is not a device" in output and service.requests == 0


def test_a_dataset_without_the_teachers_classes_is_one_error_line_from_evaluate(monkeypatch):
    def evaluate_teacher(*_args, **_kwargs):
        raise DatasetMismatch("dataset 1 has classes ['a'], the model ['b']")

    monkeypatch.setattr("trainer.evaluate.evaluate_teacher", evaluate_teacher)
    output = _invoke("evaluate", "--teacher", "t", "--dataset", "1", "--device", "cpu", code=1)
    assert output.strip().splitlines() == ["Error: dataset 1 has classes ['a'], the model ['b']"]


@pytest.mark.parametrize(
    ("option", "named"),
    [
        (["--students", "resnet10t,resnt34"], "--students: 'resnt34': not a timm model name"),
        (["--teacher-arch", "resnet_18"], "--teacher-arch: 'resnet_18': not a timm model name"),
        (["--student-steps", "100,0"], "--student-steps: each must be 1 or more, not [100, 0]"),
        (["--student-steps", "100,x"], "--student-steps: '100,x' is not a comma-separated list"),
        (["--batch-size", "0"], "--batch-size: must be 1 or more, not 0"),
        (["--student-steps", "100,0"], "--student-steps: each must be 1 or more, not [100, 0]"),
        (["--student-steps", "100,x"], "--student-steps: '100,x' is not a comma-separated list"),
    ],
)
def test_a_model_iterate_cannot_build_is_a_usage_error_before_any_request(
    service, monkeypatch, option, named
):
    monkeypatch.setattr("trainer.cli.iterate", lambda *_args: pytest.fail("the loop started"))
    args = ["iterate", "--labeled", "1", "--unlabeled", "2", "--teacher", "t0", *option]
    if option[0] == "--teacher-arch":
        args.remove("--teacher")
        args.remove("t0")
    output = _invoke(*args, code=2)
    assert output.strip().splitlines()[-1].startswith(f"Error: {named}") and service.requests == 0
