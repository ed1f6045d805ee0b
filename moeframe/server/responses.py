"""Engine updates -> an OpenAI response body, whole or as server-sent events, for either endpoint.

A request with n choices over p prompts streams updates of p*n engine
requests (choice index = prompt * n + j, as OpenAI orders them). A whole
response waits for all of them; a stream sends each choice's new text as it
becomes safe to send (``TextDelta``), then a usage chunk if the client asked
for one, then ``data: [DONE]``. The endpoint's ``ResponseShape`` decides how
a choice looks; everything else here is the same for both endpoints.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse

from moeframe.server.async_engine import RequestStream, TextDelta
from moeframe.server.engine_loop import Update
from moeframe.server.errors import APIError, error_body
from moeframe.server.protocol import ResponseEnvelope, SamplingFields, Usage, new_id, now_s
from moeframe.server.response_shapes import ResponseShape
from moeframe.server.sampling import stop_strings


@dataclass
class ChoiceResult:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    routed_experts: list = field(default_factory=list)

    def add(self, update: Update) -> None:
        self.text = update.text
        self.routed_experts += update.new_routed_experts or []
        self.token_ids += update.new_token_ids
        self.logprobs += update.new_logprobs
        self.finish_reason, self.error = update.finish_reason, update.error
        self.prompt_tokens, self.cached_tokens = update.prompt_tokens, update.cached_tokens

    @property
    def logprob_text_chars(self) -> int:
        """Characters of token text that the logprobs so far cover: the text offset of the next token."""
        return sum(len(e["token"]) for e in self.logprobs)


def count_usage(choices: list[ChoiceResult], n: int) -> Usage:
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


def error_event(update: Update) -> dict[str, str]:
    return {"data": json.dumps(error_body(update.error or "the request failed in the engine", "server_error"))}


def event_stream(stream: RequestStream, events: AsyncIterator[dict[str, str]]) -> EventSourceResponse:
    """SSE over ``events``; a hang-up aborts the requests even before the first event is sent."""

    async def on_client_close(_: Any) -> None:
        stream.abort()

    return EventSourceResponse(events, client_close_handler_callable=on_client_close)


class Reply:
    """One request's response: its id and creation time, and the request fields that decide the body."""

    def __init__(self, shape: ResponseShape, model: str, body: SamplingFields) -> None:
        self.shape, self.model = shape, model
        self.choices_per_prompt = body.n
        self.stop = stop_strings(body.stop)
        self.include_usage = body.stream_options is not None and body.stream_options.include_usage
        self.return_routes = body.return_routed_experts
        self.id, self.created = new_id(shape.id_prefix), now_s()

    def whole(self, results: list[ChoiceResult]) -> ResponseEnvelope:
        raise_if_failed(results)
        choices = [self.shape.choice(i, r.text, r.logprobs, r.finish_reason) for i, r in enumerate(results)]
        if self.return_routes:
            for choice, result in zip(choices, results):
                choice.routed_experts = result.routed_experts
        return self.shape.response_model(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=count_usage(results, self.choices_per_prompt),
        )

    async def events(self, stream: RequestStream) -> AsyncIterator[dict[str, str]]:
        deltas = [TextDelta(self.stop) for _ in range(stream.size)]
        results = [ChoiceResult() for _ in range(stream.size)]
        unsent: list[list] = [[] for _ in range(stream.size)]  # routes of updates whose chunk was held back
        try:
            for choice in self.shape.opening_chunk_choices(stream.size):
                yield self.chunk([choice])
            async for update in stream.updates():
                result = results[update.index]
                text_offset = result.logprob_text_chars
                result.add(update)
                if update.finish_reason == "error":
                    yield error_event(update)
                    continue
                text = deltas[update.index].next(update.text, update.finished)
                if not text and not update.finished and not update.new_logprobs and not update.new_routed_experts:
                    continue
                choice = self.shape.chunk_choice(
                    update.index, text, update.new_logprobs, text_offset, update.finish_reason
                )
                if self.return_routes:
                    unsent[update.index] += update.new_routed_experts or []
                if choice is not None:  # a shape may hold text back (a tool call's start still being written)
                    if self.return_routes:  # the routes that became final since the last chunk sent
                        choice.routed_experts, unsent[update.index] = unsent[update.index], []
                    yield self.chunk([choice])
            if self.include_usage:
                yield self.chunk([], count_usage(results, self.choices_per_prompt))
            yield {"data": "[DONE]"}
        finally:
            stream.abort()

    def chunk(self, choices: list[BaseModel], usage: Usage | None = None) -> dict[str, str]:
        body = self.shape.chunk_model(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
        return {"data": body.model_dump_json()}
