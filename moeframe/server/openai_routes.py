"""``/v1/completions`` and ``/v1/chat/completions``: OpenAI requests in, engine submissions out.

Each endpoint keeps only what is its own: completions split ``prompt`` into
prompts (each run n times), chat renders ``messages`` through the chat
template and stops at the end of the assistant's turn, with its tools
(``tool_calls.py``: the calls' constraint, the prompt, the response shape). Both then admit one
submission, all or none, and answer through the shared ``Reply`` with their
``ResponseShape``. Either way a client that disconnects has its requests
aborted, so their KV slots go back to the cache at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from moeframe.errors import RequestError
from moeframe.server.async_engine import AsyncEngine, RequestStream
from moeframe.server.chat_format import ChatFormat
from moeframe.server.engine_loop import Submission
from moeframe.server.errors import APIError
from moeframe.server.limits import RequestLimits
from moeframe.server.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, SamplingFields
from moeframe.server.response_shapes import CompletionShape, ResponseShape
from moeframe.server.responses import ChoiceResult, Reply, event_stream
from moeframe.server.sampling import sampling_params
from moeframe.server.tool_calls import ToolPlan


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


async def collect(stream: RequestStream, request: Request) -> list[ChoiceResult]:
    choices = [ChoiceResult() for _ in range(stream.size)]
    watcher = asyncio.create_task(abort_on_disconnect(request, stream))
    try:
        async for update in stream.updates():
            choices[update.index].add(update)
    finally:
        watcher.cancel()
        stream.abort()
    return choices


class OpenAIRoutes:
    def __init__(
        self,
        engine: AsyncEngine,
        model_name: str,
        chat: ChatFormat,
        end_of_turn_ids: list[int],
        limits: RequestLimits,
    ) -> None:
        self.engine, self.model_name, self.chat = engine, model_name, chat
        self.end_of_turn_ids = end_of_turn_ids
        self.limits = limits
        self.router = APIRouter()
        self.router.add_api_route("/v1/completions", self.completions, methods=["POST"], response_model=None)
        self.router.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"], response_model=None)

    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        self.check_model(body.model)
        self.limits.completion(body)
        prompts = split_prompts(body.prompt)
        params = [p for _ in prompts for p in sampling_params(body, body.max_tokens, body.logprobs)]
        submission = Submission([p for p in prompts for _ in range(body.n)], params)
        return await self.respond(body, submission, CompletionShape(want_logprobs=body.logprobs is not None), request)

    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Any:
        self.check_model(body.model)
        self.limits.chat(body)
        tools = ToolPlan.of(body)
        prompt = await self.engine.off_loop(lambda _: self.render_chat(body.messages, tools))
        max_tokens = body.max_completion_tokens or body.max_tokens
        top = (body.top_logprobs or 0) if body.logprobs else None
        params = tools.constrain(sampling_params(body, max_tokens, top, self.end_of_turn_ids))
        submission = Submission([prompt] * body.n, params, fill_context=max_tokens is None)
        return await self.respond(body, submission, tools.shape(body.logprobs), request)

    def check_model(self, model: str) -> None:
        """An unknown model is 404 ``model_not_found``, as OpenAI answers (its client raises NotFoundError)."""
        if model != self.model_name:
            raise APIError(
                f"the model '{model}' does not exist; this server serves '{self.model_name}'",
                404,
                param="model",
                code="model_not_found",
            )

    def render_chat(self, messages: list[ChatMessage], tools: ToolPlan) -> str:
        try:
            return tools.render(self.chat, messages)
        except RequestError as err:
            raise APIError(str(err), param="messages") from None

    async def respond(
        self, body: SamplingFields, submission: Submission, shape: ResponseShape, request: Request
    ) -> Any:
        """Admit the submission, then answer with the endpoint's shape: whole, or streamed when asked."""
        try:
            stream = await self.engine.submit(submission)
        except RequestError as err:
            raise APIError(str(err)) from None
        reply = Reply(shape, self.model_name, body)
        if body.stream:
            return event_stream(stream, reply.events(stream))
        return reply.whole(await collect(stream, request))
