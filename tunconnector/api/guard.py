"""ASGI guard in front of the API: credentials before the body, and a body limit.

FastAPI resolves a route's dependencies only after it has read and parsed the body, so
without this layer an unauthenticated client could make the daemon buffer (and parse)
any amount of data before being told 401. The guard runs first, on the request line and
headers alone:

- a request that needs credentials (any POST/PUT/PATCH/DELETE, and GET routes that
  declare the authenticator) is answered 401/429 before one byte of its body is read
  (the server then closes the connection, the rest unread);
- a body announced larger than the limit (``Content-Length``) is answered 413 at once;
- any other body (chunked, or a lying ``Content-Length``) is read here, counting bytes,
  and answered 413 the moment it passes the limit; what fits is handed to the app, so
  memory per request is bounded by the limit whatever the client sends.

Validation errors (422) are answered without the input: pydantic's default error list
echoes every offending value, which turned a 50 MB invalid body into a 100 MB answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.routing import Match

from .auth import PRINCIPAL_KEY, Authenticator

log = logging.getLogger(__name__)

#: largest request body the API accepts (its real bodies are a few hundred bytes)
MAX_BODY = 1 << 20
#: a validation error answer lists at most this many errors, each message cut short
MAX_ERRORS = 10
MAX_TEXT = 120
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _depends_on(dependant: Any, target: object) -> bool:
    """Whether ``target`` is among a route's dependencies, at any depth."""
    for dep in getattr(dependant, "dependencies", ()):
        if dep.call is target or _depends_on(dep, target):
            return True
    return False


async def _answer(send: Send, status: int, detail: str,
                  headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 413:
        raw.append((b"connection", b"close"))
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class RequestGuard:
    """The ASGI middleware (installed by :func:`install`)."""

    def __init__(self, app: ASGIApp, *, api: FastAPI, auth: Authenticator,
                 max_body: int = MAX_BODY) -> None:
        self.app = app
        self.api = api
        self.auth = auth
        self.max_body = max_body
        self.too_large_total = 0
        self._secured: dict[int, bool] = {}

    def _needs_credentials(self, scope: Scope) -> bool:
        """Every method that may change something needs credentials (all of the API's
        POST/PUT/DELETE routes do), and so does a GET route that declares the
        authenticator (``/vpn/start``: the seed's clients use GET)."""
        if scope.get("method", "GET") not in SAFE_METHODS:
            return True
        for route in self.api.router.routes:
            dependant = getattr(route, "dependant", None)
            if dependant is None:
                continue
            match, _ = route.matches(scope)
            if match == Match.FULL:
                key = id(route)
                if key not in self._secured:
                    self._secured[key] = _depends_on(dependant, self.auth)
                return self._secured[key]
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        if self._needs_credentials(scope):
            client = scope.get("client")
            verdict = self.auth.verdict(client[0] if client else "unknown",
                                        headers.get("authorization"), scope.get("path", ""))
            if isinstance(verdict, tuple):
                status, detail, extra = verdict
                await _answer(send, status, detail, extra)
                return
            scope[PRINCIPAL_KEY] = verdict
        length_text = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if length_text is not None:
            if not length_text.strip().isascii() or not length_text.strip().isdigit():
                await _answer(send, 400, "bad Content-Length")
                return
            if int(length_text) > self.max_body:
                self.too_large_total += 1
                await _answer(send, 413, f"request body larger than {self.max_body} bytes")
                return
        if not chunked and not int(length_text or 0):
            await self.app(scope, receive, send)
            return
        # read the body here, bounded, then replay it to the app
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                self.too_large_total += 1
                await _answer(send, 413, f"request body larger than {self.max_body} bytes")
                return
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _trim(value: Any) -> Any:
    text = value if isinstance(value, str | int) else str(value)
    if isinstance(text, str) and len(text) > MAX_TEXT:
        return text[: MAX_TEXT - 3] + "..."
    return text


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming where and what, never echoing the input (no ``input``/``ctx``)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    out = [
        {"loc": [_trim(x) for x in list(e.get("loc", ()))[:8]],
         "msg": _trim(e.get("msg", "")), "type": _trim(e.get("type", ""))}
        for e in errors[:MAX_ERRORS]
    ]
    body: dict[str, Any] = {"detail": out}
    if len(errors) > MAX_ERRORS:
        body["more_errors"] = len(errors) - MAX_ERRORS
    return JSONResponse(body, status_code=422)


def install(app: FastAPI, auth: Authenticator, max_body: int = MAX_BODY) -> None:
    """Put the guard in front of ``app`` and its 422 handler in place."""
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(RequestGuard, api=app, auth=auth, max_body=max_body)
