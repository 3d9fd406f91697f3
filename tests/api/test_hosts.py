"""The API answers only the host names NST_ALLOWED_HOSTS lists: by default, without a token,
this machine's loopback names; with one, any (service/api/browsers.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.utils.env import clear_caches


@pytest.fixture
def statuses(monkeypatch, enqueued):
    """``statuses(hosts)``: the status of ``GET /health`` sent with each Host, to an app built
    from the settings as they are now."""
    from service.main import create_app

    def answer(hosts: list[str]) -> list[int]:
        clear_caches()
        with TestClient(create_app()) as client:
            return [client.get("/health", headers={"Host": host}).status_code for host in hosts]

    monkeypatch.delenv("NST_ALLOWED_HOSTS")
    return answer


def test_without_a_token_only_loopback_names_reach_the_api(statuses):
    loopback = ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST", "127.0.0.1"]
    others = ["nst.example.org", "localhost.evil.example", "127.0.0.1.evil.example:8000", ""]
    assert statuses(loopback + others) == [200] * len(loopback) + [400] * len(others)


def test_with_a_token_any_name_reaches_the_api_unless_the_setting_lists_some(statuses, monkeypatch):
    monkeypatch.setenv("NST_API_TOKEN", "t" * 32)
    assert statuses(["nst.example.org", "10.0.0.5:8000"]) == [200, 200]  # the token guards the rest
    monkeypatch.setenv("NST_ALLOWED_HOSTS", "*.example.org, api")
    hosts = ["nst.example.org:443", "a.b.example.org", "api:8000", "example.org", "evilexample.org", "apis"]
    assert statuses(hosts) == [200, 200, 200, 400, 400, 400]
