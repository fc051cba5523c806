"""What stands between the network and the routes: a request body limit, security headers, and validation errors
that never echo more than a short prefix of the input.

Starlette has no body-size limit and FastAPI's validation-error handler puts the whole input in the 422 (and fails
with a 500 on ``NaN``/``Infinity``, which strict JSON cannot carry), so these are the gap, as plain ASGI
middleware and one exception handler.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX_CHARS = 40
MAX_ERRORS = 20

#: the policy of every response (the page loads only its own script, style and images, and cannot be framed)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def prefix(value: Any, limit: int = PREFIX_CHARS) -> str:
    """A short printable prefix of ``value`` (non-finite numbers as ``NaN``/``Infinity``), for error messages."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, float) and not math.isfinite(value):
        text = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    else:
        try:
            text = json.dumps(value, default=lambda v: type(v).__name__)
        except (ValueError, TypeError, RecursionError):
            text = type(value).__name__
    more, text = len(text) > limit, text[:limit]
    if not text.isprintable():
        text = text.encode("unicode_escape", "backslashreplace").decode("ascii")[:limit]
    return text + ("..." if more else "")


def public_error(error: dict[str, Any]) -> dict[str, Any]:
    """One pydantic/FastAPI error with its location, message and type, and at most a short prefix of the input."""
    out: dict[str, Any] = {
        "loc": [item if isinstance(item, int) else prefix(item) for item in error.get("loc", ())][:8],
        "msg": prefix(str(error.get("msg", "")), 200),
        "type": prefix(str(error.get("type", "")), 60),
    }
    if "input" in error and error.get("type") != "missing":
        out["input"] = prefix(error["input"])
    return out


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 in FastAPI's shape (``detail: [{loc, msg, type}]``), each input cut to a short prefix; always valid
    JSON, whatever the input held."""
    errors = list(exc.errors())
    detail = [public_error(e) for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        detail.append({"loc": ["body"], "msg": f"{len(errors) - MAX_ERRORS} more error(s)", "type": "value_error"})
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 before reading them.

    A ``Content-Length`` over the limit is answered at once, before routing (so before the key check) and without
    reading the body; a body without one (chunked) is counted as it is read and cut off at the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, int(max_bytes)

    def too_large(self, size: int | None = None) -> str:
        got = f"{size} bytes" if size is not None else "more"
        return (f"request body too large ({got}); this server accepts at most {self.max_bytes} bytes "
                "(server option --max-body-bytes)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lengths = [v for k, v in scope.get("headers", ()) if k == b"content-length"]
        if lengths:
            try:
                size = int(lengths[0])
            except ValueError:
                await self.refuse(send, status.HTTP_400_BAD_REQUEST, "invalid Content-Length header")
                return
            if size > self.max_bytes:
                await self.refuse(send, status.HTTP_413_CONTENT_TOO_LARGE, self.too_large(size))
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, self.too_large())
            return message

        await self.app(scope, counted, send)

    @staticmethod
    async def refuse(send: Send, code: int, message: str) -> None:
        body = json.dumps({"detail": message}).encode()
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """Add :data:`SECURITY_HEADERS` to every response and :data:`CSP` unless the route set its own policy."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = {k.lower() for k, _ in headers}
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in names]
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
