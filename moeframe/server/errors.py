"""Every failure leaves the server as an OpenAI-style error body: {"error": {message, type, param, code}}.

The OpenAI clients raise ``BadRequestError``, ``NotFoundError``,
``RateLimitError`` and friends from these bodies, so a client sees what was
wrong with its request; the server itself goes on serving. An unexpected
exception becomes a 500 from :class:`CatchAll`, which sits inside
Starlette's ``ServerErrorMiddleware``: that one re-raises after answering,
which makes uvicorn close the keep-alive connection and fails the client's
next request; here the 500 is a normal response and the connection stays
usable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from moeframe.errors import OverloadedError, RequestError

log = logging.getLogger(__name__)

# Routing misses: a client asking for a path or method that does not exist, not a request the server refused.
NOT_A_ROUTE = (404, 405)


class APIError(Exception):
    def __init__(
        self,
        message: str,
        status_code: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status_code, self.type, self.param, self.code = message, status_code, type, param, code


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.message, err.type, err.param, err.code), status_code=err.status_code)


def validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    """The first problem of a body that did not validate, and the top-level field it is in."""
    problems = err.errors()
    if not problems:
        return "the request body is invalid", None
    first = problems[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('msg')}", None
    where = ".".join(loc) or "body"
    return f"{where}: {first.get('msg')}", (loc[0] if loc else None)


class ErrorCounter:
    """Counts what the server answers with an error: client errors (4xx) and server errors (5xx)."""

    def __init__(self, on_rejected: Callable[[], None], on_server_error: Callable[[int], None]) -> None:
        self.on_rejected, self.on_server_error = on_rejected, on_server_error

    def count(self, status_code: int) -> None:
        if status_code >= 500:
            self.on_server_error(status_code)
        elif status_code >= 400:
            self.on_rejected()

    def respond(self, err: APIError, counted: bool = True) -> JSONResponse:
        if counted:
            self.count(err.status_code)
        return error_response(err)


def install_error_handlers(app: FastAPI, counter: ErrorCounter) -> None:
    """Map every exception the routes raise to an OpenAI error body, counted by ``counter``."""

    @app.exception_handler(APIError)
    async def on_api_error(_: Request, err: APIError) -> JSONResponse:
        return counter.respond(err)

    @app.exception_handler(RequestError)
    async def on_request_error(_: Request, err: RequestError) -> JSONResponse:
        return counter.respond(APIError(str(err)))

    @app.exception_handler(OverloadedError)
    async def on_overloaded(_: Request, err: OverloadedError) -> JSONResponse:
        return counter.respond(APIError(str(err), 429, "rate_limit_error", code="queue_full"))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        message, param = validation_message(err)
        return counter.respond(APIError(message, param=param))

    @app.exception_handler(HTTPException)
    async def on_http_error(_: Request, err: HTTPException) -> JSONResponse:
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        return counter.respond(APIError(str(err.detail), err.status_code, kind), counted=err.status_code not in NOT_A_ROUTE)


async def send_error(send: Send, err: APIError, headers: dict[str, str] | None = None) -> None:
    """Answer an HTTP request with an error body straight from ASGI middleware."""
    body = json.dumps(error_body(err.message, err.type, err.param, err.code)).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status_code, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class CatchAll:
    """ASGI middleware: an exception no handler took becomes a counted 500, and the connection stays open."""

    def __init__(self, app: ASGIApp, counter: ErrorCounter) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as err:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            self.counter.count(500)
            if started:
                raise  # a response already under way cannot turn into an error any more
            await send_error(send, APIError(f"internal error: {type(err).__name__}: {err}", 500, "server_error"))
