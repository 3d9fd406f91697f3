"""What a browser needs to be told: no other site may make it change anything here, no page of
ours runs script from anywhere but this origin, and no host name but ours reaches the API.

Without ``NST_API_TOKEN`` (the default on one machine) any web page the operator opens could
otherwise POST to ``http://127.0.0.1:8000`` (cancel jobs, upload teachers): a "simple" request
needs no CORS preflight. Browsers say where a request comes from (``Sec-Fetch-Site``, ``Origin``);
clients that are not browsers (``nst``, httpx, curl) send neither and are not affected. A page
could also rebind its own domain to 127.0.0.1 and call the API as that same origin; its requests
then name that domain in ``Host``, which ``NST_ALLOWED_HOSTS`` (loopback names by default
without a token) does not list.
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


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` is ``::1``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(name: str, allowed: list[str]) -> bool:
    return any(
        pattern == "*" or name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:]))
        for pattern in allowed
    )


class BrowserGuards:
    """ASGI middleware: a 400 for a Host the service does not answer to, a 403 for another
    site's request that would change state, and the security headers on every response."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app, self.allowed_hosts = app, allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if not host_allowed(host_name(host), self.allowed_hosts):
            detail = (
                f"Host {host!r} is not a name this service answers to; add it to NST_ALLOWED_HOSTS "
                f"(now {','.join(self.allowed_hosts)})"
            )
            await _refuse(send, 400, detail)
            return
        reason = cross_site_reason(scope["method"], headers)
        if reason is not None:
            await _refuse(send, 403, f"cross-site request refused: {reason}")
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _refuse(send: Send, status: int, detail: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *SECURITY_HEADERS],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})
