"""Another site's page cannot make a browser change anything here, and our pages run only our
own scripts (service/api/browsers.py)."""

from __future__ import annotations

import re

import pytest

from tests.utils import synthetic

pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture
def running(client):
    return synthetic.finished_job(synthetic.teacher(["cat", "dog"]), [(0, 0.9)], state="running")


def _state(client, job) -> str:
    return client.get(f"/jobs/{job.id}").json()["state"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Origin": "http://testserver.evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://testserver"},  # another port or subdomain
    ],
)
def test_another_site_s_request_that_changes_state_is_403_and_changes_nothing(client, running, headers):
    response = client.post(f"/jobs/{running.id}/cancel", headers=headers)
    assert response.status_code == 403 and response.json()["detail"].startswith("cross-site request refused")
    assert _state(client, running) == "running"


@pytest.mark.parametrize(
    "headers",
    [
        {},  # nst, httpx, curl: no Origin, no Sec-Fetch-Site
        {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},  # the docs page's "Try it out"
        {"Origin": "https://testserver"},  # behind a proxy that ends TLS
    ],
)
def test_our_own_pages_and_other_clients_still_change_state(client, running, headers):
    response = client.post(f"/jobs/{running.id}/cancel", headers=headers)
    assert response.status_code == 200, response.text
    assert _state(client, running) == "cancelled"


def test_a_read_from_another_site_is_answered_without_letting_that_site_see_it(client):
    # GETs are not refused (links and bookmarks): a cross-site page cannot read the answer, as
    # no CORS header allows it.
    cross = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    response = client.get("/datasets", headers=cross)
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("path", ["/ui/", "/datasets", "/docs", "/openapi.json", "/nope"])
def test_every_response_carries_the_security_headers(client, path):
    headers = client.get(path).headers
    assert "script-src" not in headers["content-security-policy"]  # default-src 'self' covers it
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


def test_the_docs_page_loads_every_script_and_style_from_this_origin(client):
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert urls and all(url.startswith("/") or url == "data:," for url in urls), urls
    for url in urls:
        if url.startswith("/"):
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 100, url
    assert "<script>" not in page.text  # no inline script: the policy would block it


def test_a_manifest_page_takes_only_a_manifest_id(client):
    assert client.get("/ui/manifests/..%5Cjobs%5C1%3F").status_code == 422
    assert client.get(f"/ui/manifests/{'ab' * 32}").status_code == 200


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_host_the_service_does_not_answer_to_is_400_and_changes_nothing(client, running, method):
    """A page that rebinds its own domain to this machine calls the API as its own origin, so
    neither Origin nor Sec-Fetch-Site gives it away: its Host does."""
    path = f"/jobs/{running.id}" + ("/cancel" if method == "POST" else "")
    response = client.request(
        method, path, headers={"Host": "evil.example:8000", "Sec-Fetch-Site": "same-origin"}
    )
    assert response.status_code == 400
    assert response.json()["detail"] == (
        "Host 'evil.example:8000' is not a name this service answers to; add it to NST_ALLOWED_HOSTS "
        "(now testserver,localhost,127.0.0.1)"
    )
    assert _state(client, running) == "running"
