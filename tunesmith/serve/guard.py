"""What stands between the socket and the models: API keys, body size, slow clients; and the JSON error shape.

A pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streamed answers). It reads the whole
body itself, bounded in bytes and in time, so an oversized or trickled request is answered 413 / 408
before any model work, and the app below sees a body that is already complete.
"""

from __future__ import annotations

import asyncio
import json

from .options import ServeOptions


class ApiError(Exception):
    """A request the server will not answer: status, message, the field it concerns, extra headers."""

    def __init__(
        self, status: int, message: str, field: str | None = None, kind: str = "invalid_request", headers=None
    ):
        super().__init__(message)
        self.status, self.message, self.field, self.kind = status, message, field, kind
        self.headers = headers or {}

    def body(self) -> dict:
        error = {"message": self.message, "type": self.kind}
        if self.field:
            error["field"] = self.field
        return {"error": error}


async def send_json(send, status: int, body: dict, headers: dict | None = None) -> None:
    raw = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    head += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    key = headers.get(b"x-api-key")
    return key.decode("latin-1") if key else None


class Guard:
    OPEN_PATHS = ("/healthz",)

    def __init__(self, app, options: ServeOptions, on_reject=lambda path, status, kind: None):
        self.app, self.options, self.on_reject = app, options, on_reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path = scope["path"]
        try:
            if path not in self.OPEN_PATHS and not self.options.key_ok(presented_key(headers)):
                raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer KEY`", kind="unauthorized")
            body = await self._read_body(headers, receive)
        except ApiError as err:
            self.on_reject(path, err.status, err.kind)
            headers = {"www-authenticate": "Bearer"} if err.status == 401 else {}
            return await send_json(send, err.status, err.body(), headers)
        except _Disconnected:
            return None
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _read_body(self, headers: dict, receive) -> bytes:
        limit = self.options.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(
                413, f"the request body is {int(declared):,} bytes; the limit is {limit:,}", kind="too_large"
            )
        chunks, size, more = [], 0, True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.read_timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                raise ApiError(
                    408, f"the request body did not arrive within {self.options.read_timeout_s:g}s", kind="timeout"
                ) from None
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the request body exceeds the limit of {limit:,} bytes", kind="too_large")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


class _Disconnected(Exception):
    pass
