"""The asyncio face of the engine thread: submissions become streams of updates on per-request queues.

Each HTTP request awaits its own ``asyncio.Queue``; the engine thread feeds it
through ``call_soon_threadsafe``. A stream that is closed before its requests
finish (the client went away) aborts them, which frees their KV slots at
the next command the engine thread runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from moeframe.api import Engine
from moeframe.server.engine_loop import EngineLoop, Submission, Update

T = TypeVar("T")


class RequestStream:
    def __init__(self, loop: EngineLoop, size: int) -> None:
        self._loop = loop
        self.queue: asyncio.Queue[Update] = asyncio.Queue()
        self.rids: list[int] = []
        self.size = size
        self._open: set[int] = set()

    async def updates(self) -> AsyncIterator[Update]:
        """Every update of every request of the submission, until all have finished."""
        while self._open:
            update = await self.queue.get()
            if update.finished:
                self._open.discard(update.index)
            yield update

    def abort(self) -> None:
        """Abort the requests that have not finished (a no-op once all did)."""
        if self._open:
            self._loop.abort([self.rids[i] for i in sorted(self._open)])
            self._open.clear()


class AsyncEngine:
    def __init__(self, engine_loop: EngineLoop) -> None:
        self.loop = engine_loop

    async def call(self, fn: Callable[[Engine], T]) -> T:
        """``fn(engine)`` on the engine thread, between steps."""
        return await asyncio.wrap_future(self.loop.call(fn))

    async def off_loop(self, fn: Callable[[Engine], T]) -> T:
        """``fn(engine)`` on an admission thread: work that needs no engine state, such as tokenizing."""
        return await asyncio.wrap_future(self.loop.off_loop(fn))

    async def submit(self, submission: Submission) -> RequestStream:
        """Admit a submission; raises RequestError when one of its prompts is invalid, OverloadedError when full."""
        stream = RequestStream(self.loop, len(submission.prompts))
        aio_loop = asyncio.get_running_loop()
        future = self.loop.submit(submission, lambda u: aio_loop.call_soon_threadsafe(stream.queue.put_nowait, u))
        try:
            stream.rids = await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            future.add_done_callback(lambda f: f.exception() is None and self.loop.abort(f.result()))
            raise
        stream._open = set(range(len(stream.rids)))
        return stream


class TextDelta:
    """The part of a choice's text that is safe to send now.

    Text is held back while it ends in an incomplete UTF-8 character (U+FFFD
    from the detokenizer) or in what could still become a stop string (the
    engine cuts a stop string and what follows it from the final text), the
    way vLLM holds back streamed text near stop strings.
    """

    def __init__(self, stop: list[str]) -> None:
        self.stop = [s for s in stop if s]
        self.sent = ""

    def held_back(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that a stop string starts with."""
        longest = max((len(s) for s in self.stop), default=1) - 1
        for k in range(min(longest, len(text)), 0, -1):
            if any(s.startswith(text[-k:]) for s in self.stop):
                return k
        return 0

    def next(self, text: str, finished: bool) -> str:
        safe = text if finished else text[: len(text) - self.held_back(text)].rstrip("\ufffd")
        if len(safe) <= len(self.sent):
            return ""
        delta = safe[len(self.sent) :]
        self.sent = safe
        return delta
