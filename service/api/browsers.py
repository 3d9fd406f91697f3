"""What a browser needs to be told: no other site may make it change anything here, and no page
of ours runs script from anywhere but this origin.

Without ``NST_API_TOKEN`` (the default on one machine) any web page the operator opens could
otherwise POST to ``http://127.0.0.1:8000`` (cancel jobs, upload teachers): a "simple" request
needs no CORS preflight. Browsers say where a request comes from (``Sec-Fetch-Site``, ``Origin``);
clients that are not browsers (``nst``, httpx, curl) send neither and are not affected.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The UI's and the API docs' scripts and styles are our own files; images are thumbnails, charts
# and Swagger's inline icons. Nothing may frame a page.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def cross_site_reason(method: str, headers: dict[bytes, bytes]) -> str | None:
    """Why a request that changes state must be refused as another site's, or None."""
    if method not in UNSAFE_METHODS:
        return None
    site = headers.get(b"sec-fetch-site")
    if site is not None and site not in (b"same-origin", b"none"):
        return f"Sec-Fetch-Site is {site.decode('latin-1')!r}"
    origin = headers.get(b"origin", b"").decode("latin-1")
    host = headers.get(b"host", b"").decode("latin-1")
    # The host and port only: behind a proxy that ends TLS, the scheme seen here is not the page's.
    if origin and urlsplit(origin).netloc != host:
        return f"Origin {origin!r} is not this service"
    return None


class BrowserGuards:
    """ASGI middleware: a 403 for another site's request that would change state, and the
    security headers on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reason = cross_site_reason(scope["method"], dict(scope["headers"]))
        if reason is not None:
            body = json.dumps({"detail": f"cross-site request refused: {reason}"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [(b"content-type", b"application/json"), *SECURITY_HEADERS],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)
