"""Who may use the server: web pages only when ``--allow-origin`` names them, and, with ``--api-key``,
only clients that send the key.

A browser sends a page's cross-site request with the page's ``Origin``, and for "simple" requests
(a ``text/plain`` body, no custom header) it sends it without asking first, so any page its user
visits could make an open loopback server generate. Every request with an ``Origin`` header that is
not allowed is refused (403) before it reaches the app; a request from the server's own pages (the
``/docs`` page, same origin, the host an address rather than a name a DNS record could point here)
passes. With ``--allow-origin`` Starlette's CORS middleware answers those origins' preflights.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
PROTECTED = "/v1/"   # the API key guards the API, not /health or the docs


def _error(message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()


def _is_address(host: str) -> bool:
    """Whether a Host header names this machine by address ("127.0.0.1:8000", "[::1]:8000",
    "localhost:8000") rather than by a DNS name, which another site could point here."""
    if host.startswith("["):
        name = host[1:host.find("]")] if "]" in host else host[1:]
    else:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            name = host
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class AccessPolicy:
    """ASGI middleware: refuses requests from origins not allowed (403 ``origin_not_allowed``) and,
    with an API key, requests to /v1/ without ``Authorization: Bearer <key>`` (401
    ``invalid_api_key``), with OpenAI's error body."""

    def __init__(self, app, allowed_origins: list[str] | None = None, api_key: str | None = None):
        self.app = app
        self.allowed = set(allowed_origins or ())
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if origin is not None and not self._origin_ok(origin, headers.get("host", "")):
            message = (f"requests from web pages at {origin} are not allowed; to serve that page, start "
                       f"sdar-serve with --allow-origin {origin}")
            await _respond(send, 403, _error(message, "origin_not_allowed"))
            return
        guarded = scope["path"].startswith(PROTECTED) and scope["method"] != "OPTIONS"
        if self.api_key is not None and guarded and not self._key_ok(headers.get("authorization", "")):
            message = ("missing or incorrect API key: send it as 'Authorization: Bearer <key>' (the openai "
                       "client's api_key)")
            await _respond(send, 401, _error(message, "invalid_api_key"), [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)

    def _key_ok(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        given = token.strip().encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self.api_key.encode())

    def _origin_ok(self, origin: str, host: str) -> bool:
        if origin in self.allowed or "*" in self.allowed:
            return True
        same = origin in (f"http://{host}", f"https://{host}")
        return same and _is_address(host)


async def _respond(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
                   ) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})
