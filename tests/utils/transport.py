"""Point ``nst.client.Client`` at the in-process app of a ``TestClient``, optionally changing
the answers on the way (a download corrupted or cut short)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from nst.client import Client

# (headers, body) of an answer -> the (headers, body) the client receives instead
Change = Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]


class _ThroughTestClient(httpx.BaseTransport):
    def __init__(self, test_client, change: Change | None):
        self._test_client, self._change = test_client, change

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self._test_client.request(
            request.method, str(request.url), headers=request.headers, content=request.read()
        )
        headers, body = dict(answer.headers), answer.content
        if self._change is not None and not answer.is_error:
            headers, body = self._change(headers, body)
            headers.pop("content-length", None)
        return httpx.Response(answer.status_code, headers=headers, content=body)


def in_process_client(test_client, change: Change | None = None) -> Client:
    """A client of the app; ``change``, when given, rewrites every successful answer."""
    return Client("http://testserver", transport=_ThroughTestClient(test_client, change))
