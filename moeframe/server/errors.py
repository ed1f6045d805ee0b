"""Every failure leaves the server as an OpenAI-style error body: {"error": {message, type, param, code}}.

The OpenAI clients raise ``BadRequestError`` and friends from these bodies,
so a client sees what was wrong with its request; the server itself goes
on serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from moeframe.errors import RequestError

log = logging.getLogger(__name__)


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


def install_error_handlers(app: FastAPI, on_rejected: Callable[[], None]) -> None:
    """Map every exception to an OpenAI error body; ``on_rejected`` counts the client errors (4xx)."""

    def respond(err: APIError) -> JSONResponse:
        if err.status_code < 500:
            on_rejected()
        return error_response(err)

    @app.exception_handler(APIError)
    async def on_api_error(_: Request, err: APIError) -> JSONResponse:
        return respond(err)

    @app.exception_handler(RequestError)
    async def on_request_error(_: Request, err: RequestError) -> JSONResponse:
        return respond(APIError(str(err)))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        message, param = validation_message(err)
        return respond(APIError(message, param=param))

    @app.exception_handler(HTTPException)
    async def on_http_error(_: Request, err: HTTPException) -> JSONResponse:
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        return respond(APIError(str(err.detail), err.status_code, kind))

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error in a request")
        return error_response(APIError(f"internal error: {err}", 500, "server_error"))
