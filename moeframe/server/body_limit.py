"""ASGI middleware that refuses a request body over ``max_bytes`` with 413, before reading it into memory.

A declared ``Content-Length`` over the limit is refused at once; a body sent
without one (chunked) is counted as it arrives and refused when it passes
the limit. Either way the rest of the body is read and dropped chunk by
chunk (uvicorn holds at most its flow-control window of it), so the client,
still sending, reads the 413 instead of a connection reset, and memory
never holds more than ``max_bytes`` of one body. A body within the limit is
handed to the app as one message, as the app would have read it anyway.
"""

from __future__ import annotations


from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moeframe.server.errors import APIError, ErrorCounter, send_error


async def drain(receive: Receive) -> bool:
    """Read and drop the rest of a body; False if the client went away instead."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        if not message.get("more_body", False):
            return True


def declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, counter: ErrorCounter) -> None:
        self.app, self.max_bytes, self.counter = app, max_bytes, counter

    def too_large(self) -> APIError:
        return APIError(
            f"the request body is larger than this server's limit of {self.max_bytes} bytes (server.max_body_bytes)",
            413,
            code="request_too_large",
        )

    async def refuse(self, receive: Receive, send: Send, body_done: bool) -> None:
        if body_done or await drain(receive):
            self.counter.count(413)
            await send_error(send, self.too_large())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = declared_length(scope)
        if length is not None and length > self.max_bytes:
            await self.refuse(receive, send, body_done=False)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                chunks.clear()
                await self.refuse(receive, send, body_done=not more)
                return
            chunks.append(chunk)
            if not more:
                break
        await self.app(scope, replay(b"".join(chunks), receive), send)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives ``body`` whole first, then whatever the connection says next (a disconnect)."""
    given = False

    async def receive_again() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


