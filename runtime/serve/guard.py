"""The outermost layer of the app: the Host check, and one well-formed answer for any failure.

Starlette's own last-resort handler sends its 500 and then re-raises, and uvicorn answers an
exception raised after a response started by closing the socket without ``Connection:
close``: the client's next request on that pooled connection is reset. Here every exception
that escapes the routes becomes an ordinary JSON 500 (``errors.describe``) and the connection
stays usable; a response that must close it says so (``Connection: close``).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable, MutableMapping

from lame_runtime.serve.boundary import HostCheck
from lame_runtime.serve.errors import describe, error_body

log = logging.getLogger("lame_runtime.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Probes (a load balancer's, Kubernetes') address the server by its IP and read nothing a
# rebinding page could use, so they answer whatever the Host.
OPEN_PATHS = ("/health", "/ready")


class Guard:
    def __init__(self, app: ASGIApp, hosts: HostCheck, count: Callable[[str, int], None]) -> None:
        self.app, self.hosts, self.count = app, hosts, count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path") not in OPEN_PATHS and not self.hosts.ok(_header(scope, b"host")):
            self.count("host", 400)
            await send_json(
                send,
                400,
                error_body(
                    "the Host header names a host this server does not answer to; start lame-serve "
                    "with --allowed-hosts NAME to serve it under another name",
                    "invalid_request_error",
                    "host_not_allowed",
                ),
            )
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as err:  # noqa: BLE001  (the last resort: one answer, never a reset)
            if started:  # nothing here streams, so this is a bug; the socket cannot be saved
                raise
            log.error("request failed", exc_info=err)
            status, body, headers = describe(err)
            self.count("other", status)
            await send_json(send, status, body, headers)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def render(body: Any) -> bytes:
    """JSON bytes that cannot fail to encode: non-ASCII is escaped (an error message may quote
    what a client sent)."""
    return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")


async def send_json(send: Send, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    payload = render(body)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
