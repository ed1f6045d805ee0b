"""Graceful shutdown: stop admitting, let in-flight requests finish for a grace period, then end the rest.

On SIGTERM uvicorn stops accepting connections and waits for open ones;
:meth:`GracefulShutdown.begin` runs beside it: from then on a new request
(on a kept-alive connection) gets 503, and after ``grace_s`` every request
still in the engine is aborted, so each stream sends its last chunk with a
finish_reason and ``data: [DONE]`` and each whole response returns, and
uvicorn's wait ends. SGLang and vLLM drain the same way (stop intake, wait,
then abort). sse-starlette's own drain is turned off: it cancels streams at
once, cutting them before their finish_reason.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sse_starlette.sse import AppStatus
from starlette.types import ASGIApp, Receive, Scope, Send

from moeframe.server.engine_loop import EngineLoop
from moeframe.server.errors import APIError, ErrorCounter, send_error

log = logging.getLogger(__name__)

AppStatus.disable_automatic_graceful_drain()


class GracefulShutdown:
    def __init__(self, engine_loop: EngineLoop, grace_s: float) -> None:
        self.engine_loop, self.grace_s = engine_loop, grace_s
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's event loop, set when the app starts
        self._task: asyncio.Task | None = None

    def request(self) -> None:
        """Start draining from any thread or a signal handler (uvicorn's SIGTERM handler calls it)."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.begin)

    def begin(self) -> None:
        """Start draining (idempotent); call on the event loop's thread."""
        if self.draining:
            return
        self.draining = True
        log.info("shutting down: no new requests; in-flight ones get %.1f s to finish", self.grace_s)
        self._task = asyncio.get_running_loop().create_task(self._end_in_flight())

    async def _end_in_flight(self) -> None:
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline and self.engine_loop.num_in_flight:
            await asyncio.sleep(0.05)
        if self.engine_loop.num_in_flight:
            log.info("aborting %d requests still in flight", self.engine_loop.num_in_flight)
            self.engine_loop.abort_all()


class RefuseWhileDraining:
    """ASGI middleware: once shutdown began, API requests get 503 (monitoring routes still answer)."""

    def __init__(self, app: ASGIApp, shutdown: GracefulShutdown, counter: ErrorCounter) -> None:
        self.app, self.shutdown, self.counter = app, shutdown, counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.shutdown.draining and scope["method"] == "POST":
            self.counter.count(503)
            await send_error(send, APIError("the server is shutting down", 503, "server_error"), {"connection": "close"})
            return
        await self.app(scope, receive, send)
