"""``/v1/completions`` and ``/v1/chat/completions``: OpenAI requests in, engine submissions out.

A request with n choices over p prompts is one submission of p*n engine
requests (choice index = prompt * n + j, as OpenAI orders them), admitted
all or none. Non-streaming responses wait for every choice; streaming ones
send server-sent events (``data: {chunk}`` ... ``data: [DONE]``). Either way
a client that disconnects has its requests aborted, so their KV slots go
back to the cache at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from moeframe.errors import RequestError
from moeframe.server.async_engine import AsyncEngine, RequestStream, TextDelta
from moeframe.server.chat_format import ChatFormat, message_text
from moeframe.server.engine_loop import Submission, Update
from moeframe.server.errors import APIError, error_body
from moeframe.server.logprobs import chat_logprobs, completion_logprobs
from moeframe.server.protocol import (
    ChatChoice,
    ChatChoiceMessage,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Usage,
    new_id,
    now_s,
)
from moeframe.server.sampling import sampling_params


@dataclass
class ChoiceResult:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0

    def add(self, update: Update) -> None:
        self.text = update.text
        self.token_ids += update.new_token_ids
        self.logprobs += update.new_logprobs
        self.finish_reason, self.error = update.finish_reason, update.error
        self.prompt_tokens, self.cached_tokens = update.prompt_tokens, update.cached_tokens


def usage(choices: list[ChoiceResult], n: int) -> Usage:
    """Prompt tokens count once per prompt, not once per choice (OpenAI's accounting)."""
    prompt = sum(c.prompt_tokens for c in choices[::n])
    cached = sum(c.cached_tokens for c in choices[::n])
    completion = sum(len(c.token_ids) for c in choices)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details={"cached_tokens": cached},
    )


def raise_if_failed(choices: list[ChoiceResult]) -> None:
    failed = next((c for c in choices if c.finish_reason == "error"), None)
    if failed is not None:
        raise APIError(failed.error or "the request failed in the engine", 500, "server_error")


def split_prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError("prompt must not be empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return list(prompt)


async def abort_on_disconnect(request: Request, stream: RequestStream) -> None:
    """Wait for the client to hang up (the body is read, so receive() yields only that), then abort."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            stream.abort()
            return


def event_stream(stream: RequestStream, events: AsyncIterator[dict[str, str]]) -> EventSourceResponse:
    """SSE over ``events``; a hang-up aborts the requests even before the first event is sent."""

    async def on_client_close(_: Any) -> None:
        stream.abort()

    return EventSourceResponse(events, client_close_handler_callable=on_client_close)


class OpenAIRoutes:
    def __init__(
        self,
        engine: AsyncEngine,
        model_name: str,
        chat: ChatFormat,
        end_of_turn_ids: list[int],
    ) -> None:
        self.engine, self.model_name, self.chat = engine, model_name, chat
        self.end_of_turn_ids = end_of_turn_ids
        self.router = APIRouter()
        self.router.add_api_route("/v1/completions", self.completions, methods=["POST"], response_model=None)
        self.router.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"], response_model=None)

    def check_model(self, model: str) -> None:
        if model != self.model_name:
            raise APIError(
                f"the model '{model}' does not exist; this server serves '{self.model_name}'",
                param="model",
                code="model_not_found",
            )

    async def admit(self, submission: Submission) -> RequestStream:
        try:
            return await self.engine.submit(submission)
        except RequestError as err:
            raise APIError(str(err)) from None

    async def collect(self, stream: RequestStream, request: Request) -> list[ChoiceResult]:
        choices = [ChoiceResult() for _ in range(stream.size)]
        watcher = asyncio.create_task(abort_on_disconnect(request, stream))
        try:
            async for update in stream.updates():
                choices[update.index].add(update)
        finally:
            watcher.cancel()
            stream.abort()
        return choices

    # ---- /v1/completions ----
    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        self.check_model(body.model)
        prompts = split_prompts(body.prompt)
        params = [p for _ in prompts for p in sampling_params(body, body.max_tokens, body.logprobs)]
        stream = await self.admit(Submission([p for p in prompts for _ in range(body.n)], params))
        rid, created = new_id("cmpl"), now_s()
        if body.stream:
            return event_stream(stream, self.completion_events(stream, body, rid, created))
        choices = await self.collect(stream, request)
        raise_if_failed(choices)
        return CompletionResponse(
            id=rid,
            created=created,
            model=self.model_name,
            choices=[
                CompletionChoice(
                    index=i,
                    text=c.text,
                    logprobs=completion_logprobs(c.logprobs, 0) if body.logprobs is not None else None,
                    finish_reason=c.finish_reason,
                )
                for i, c in enumerate(choices)
            ],
            usage=usage(choices, body.n),
        )

    async def completion_events(
        self, stream: RequestStream, body: CompletionRequest, rid: str, created: int
    ) -> AsyncIterator[dict[str, str]]:
        deltas = [TextDelta(stream_stops(body.stop)) for _ in range(stream.size)]
        choices = [ChoiceResult() for _ in range(stream.size)]
        try:
            async for update in stream.updates():
                choice = choices[update.index]
                offset = sum(len(e["token"]) for e in choice.logprobs)
                choice.add(update)
                if update.finish_reason == "error":
                    yield {"data": self.error_event(update)}
                    continue
                text = deltas[update.index].next(update.text, update.finished)
                if not text and not update.finished and not update.new_logprobs:
                    continue
                chunk = CompletionResponse(
                    id=rid,
                    created=created,
                    model=self.model_name,
                    choices=[
                        CompletionChoice(
                            index=update.index,
                            text=text,
                            logprobs=(
                                completion_logprobs(update.new_logprobs, offset) if body.logprobs is not None else None
                            ),
                            finish_reason=update.finish_reason,
                        )
                    ],
                )
                yield {"data": chunk.model_dump_json()}
            if body.stream_options is not None and body.stream_options.include_usage:
                last = CompletionResponse(
                    id=rid, created=created, model=self.model_name, choices=[], usage=usage(choices, body.n)
                )
                yield {"data": last.model_dump_json()}
            yield {"data": "[DONE]"}
        finally:
            stream.abort()

    # ---- /v1/chat/completions ----
    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Any:
        self.check_model(body.model)
        try:
            messages = [{"role": m.role, "content": message_text(m.content)} for m in body.messages]
            prompt = self.chat.render(messages, add_generation_prompt=True)
        except RequestError as err:
            raise APIError(str(err), param="messages") from None
        max_tokens = body.max_completion_tokens or body.max_tokens
        top = (body.top_logprobs or 0) if body.logprobs else None
        params = sampling_params(body, max_tokens, top, self.end_of_turn_ids)
        stream = await self.admit(Submission([prompt] * body.n, params, fill_context=max_tokens is None))
        rid, created = new_id("chatcmpl"), now_s()
        if body.stream:
            return event_stream(stream, self.chat_events(stream, body, rid, created))
        choices = await self.collect(stream, request)
        raise_if_failed(choices)
        return ChatCompletionResponse(
            id=rid,
            created=created,
            model=self.model_name,
            choices=[
                ChatChoice(
                    index=i,
                    message=ChatChoiceMessage(content=c.text),
                    logprobs=chat_logprobs(c.logprobs) if body.logprobs else None,
                    finish_reason=c.finish_reason,
                )
                for i, c in enumerate(choices)
            ],
            usage=usage(choices, body.n),
        )

    async def chat_events(
        self, stream: RequestStream, body: ChatCompletionRequest, rid: str, created: int
    ) -> AsyncIterator[dict[str, str]]:
        deltas = [TextDelta(stream_stops(body.stop)) for _ in range(stream.size)]
        choices = [ChoiceResult() for _ in range(stream.size)]

        def chunk(index: int, delta: ChatDelta, logprobs: Any = None, finish_reason: str | None = None) -> str:
            body_ = ChatCompletionChunk(
                id=rid,
                created=created,
                model=self.model_name,
                choices=[ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason)],
            )
            return body_.model_dump_json()

        try:
            for index in range(stream.size):
                yield {"data": chunk(index, ChatDelta(role="assistant", content=""))}
            async for update in stream.updates():
                choices[update.index].add(update)
                if update.finish_reason == "error":
                    yield {"data": self.error_event(update)}
                    continue
                text = deltas[update.index].next(update.text, update.finished)
                if not text and not update.finished and not update.new_logprobs:
                    continue
                logprobs = chat_logprobs(update.new_logprobs) if body.logprobs else None
                yield {"data": chunk(update.index, ChatDelta(content=text), logprobs, update.finish_reason)}
            if body.stream_options is not None and body.stream_options.include_usage:
                last = ChatCompletionChunk(
                    id=rid, created=created, model=self.model_name, choices=[], usage=usage(choices, body.n)
                )
                yield {"data": last.model_dump_json()}
            yield {"data": "[DONE]"}
        finally:
            stream.abort()

    @staticmethod
    def error_event(update: Update) -> str:
        return json.dumps(error_body(update.error or "the request failed in the engine", "server_error"))


def stream_stops(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])
