"""The access log: one line per HTTP request, written when its response has been sent.

``GET /v1/files 200 3.1 ms project=default request_id=req_…`` with the same as fields for
``--log-format json``: method, path, status, duration_ms, project, request_id, client, bytes. The
query string is never logged (it may carry secrets), nor any header: no API key or Authorization
value can reach the log from here. A pure ASGI middleware (not ``BaseHTTPMiddleware``), so a
streamed response is timed to its last byte.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("freight.access")


class AccessLog:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": None, "request_id": None, "bytes": 0}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() == b"x-request-id":
                        seen["request_id"] = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        failed = False
        try:
            await self.app(scope, receive, sending)
        except BaseException:
            failed = True
            raise
        finally:
            self._line(scope, seen, (time.perf_counter() - started) * 1000, failed)

    @staticmethod
    def _line(scope: Scope, seen: dict[str, Any], ms: float, failed: bool) -> None:
        status = seen["status"] if seen["status"] is not None else (500 if failed else 0)
        state = scope.get("state") or {}
        project = state.get("project") if isinstance(state, dict) else None
        client = scope.get("client")
        method, path = scope.get("method", "?"), scope.get("path", "?")
        level = logging.ERROR if status >= 500 else logging.INFO
        fields = {"event": "http_request", "method": method, "path": path, "status": status,
                  "duration_ms": round(ms, 2), "project": project, "request_id": seen["request_id"],
                  "client": client[0] if client else None, "bytes": seen["bytes"]}
        if failed:
            fields["aborted"] = True  # an error (or a client gone) before the response was complete
        log.log(level, "%s %s %d %.1f ms", method, path, status, ms, extra=fields)
