"""ASGI middleware: with an API key set, a request without ``Authorization: Bearer <key>`` gets 401.

The key comes from ``server.api_key`` or the ``MOEFRAME_API_KEY``
environment variable (the config wins). As vLLM's ``--api-key`` does,
monitoring stays open, so probes and scrapers need no secret: ``/health``,
``/metrics`` and ``/stats``; every other route (the OpenAI routes,
``/score``, ``/model_info``) needs the key. Keys are compared in constant
time.
"""

from __future__ import annotations

import hmac
import os

from starlette.types import ASGIApp, Receive, Scope, Send

from moeframe.server.errors import APIError, ErrorCounter, send_error

API_KEY_ENV = "MOEFRAME_API_KEY"
OPEN_PATHS = frozenset({"/health", "/metrics", "/stats"})


def resolve_api_key(configured: str | None) -> str | None:
    """``server.api_key`` if set, else $MOEFRAME_API_KEY if set and not empty, else None (no key needed)."""
    if configured:
        return configured
    return os.environ.get(API_KEY_ENV) or None


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class RequireAPIKey:
    def __init__(self, app: ASGIApp, api_key: str, counter: ErrorCounter) -> None:
        self.app, self.api_key, self.counter = app, api_key.encode(), counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None or not hmac.compare_digest(token.encode(), self.api_key):
            self.counter.count(401)
            message = "no API key was given" if token is None else "the API key is not valid"
            err = APIError(f"{message}: send 'Authorization: Bearer <key>'", 401, code="invalid_api_key")
            await send_error(send, err, {"www-authenticate": "Bearer"})
            return
        await self.app(scope, receive, send)
