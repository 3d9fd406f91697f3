"""Point ``nst.client.Client`` at the in-process app of a ``TestClient``."""

from __future__ import annotations

import httpx

from nst.client import Client


class _ThroughTestClient(httpx.BaseTransport):
    def __init__(self, test_client):
        self._test_client = test_client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self._test_client.request(
            request.method, str(request.url), headers=request.headers, content=request.read()
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


def in_process_client(test_client) -> Client:
    return Client("http://testserver", transport=_ThroughTestClient(test_client))
