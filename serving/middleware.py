"""The ASGI middleware of `nightshift serve`: `BodyLimit` (413 for a body over serve.max_body_bytes, before a
route reads it) and `AccessLog` (one line per request with the API key's name, in place of uvicorn's access log)."""

from __future__ import annotations

import time

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from pipelines.telemetry import get_logger

access_log = get_logger("serve.access")  # one line per request, with the API key's name


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes gets 413 (by its Content-Length, or while it streams in)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        message = f"request body over the limit of {self.limit} bytes (setting serve.max_body_bytes)"
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, detail=message)
            return event

        return await self.app(scope, limited, send)


class AccessLog:
    """ASGI middleware: one log line per request, with the name of the API key that sent it (never the key); it
    replaces uvicorn's access log."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client")
            key = (scope.get("state") or {}).get("api_key")
            access_log.info(f"{scope['method']} {scope['path']} {status}",
                            extra={**({"api_key": key} if key else {}), "client": client[0] if client else None,
                                   "seconds": round(time.perf_counter() - started, 4)})
