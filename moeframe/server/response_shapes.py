"""The part of a response body that differs between /v1/completions and /v1/chat/completions.

OpenAI gives the two endpoints different choice shapes (``text`` versus a
``message``, or a ``delta`` when streamed), different logprobs formats and,
for chat, a first chunk per choice that carries only the role. A shape holds
just those differences; the flow that fills them in (collecting updates,
usage, the SSE loop) is written once in ``responses.py``, as SGLang keeps
that flow in ``OpenAIServingBase`` and lets each endpoint build its own
choices.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel

from moeframe.server.logprobs import chat_logprobs, completion_logprobs
from moeframe.server.protocol import (
    ChatChoice,
    ChatChoiceMessage,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionResponse,
    ResponseEnvelope,
)

LogprobEntries = list[dict[str, Any]]


@dataclass(frozen=True)
class ResponseShape(ABC):
    id_prefix: ClassVar[str]
    response_model: ClassVar[type[ResponseEnvelope]]
    chunk_model: ClassVar[type[ResponseEnvelope]]
    want_logprobs: bool

    @abstractmethod
    def choice(self, index: int, text: str, logprobs: LogprobEntries, finish_reason: str | None) -> BaseModel:
        """One choice of a whole (non-streamed) response."""

    @abstractmethod
    def chunk_choice(
        self, index: int, text: str, logprobs: LogprobEntries, text_offset: int, finish_reason: str | None
    ) -> BaseModel | None:
        """One choice of a stream chunk: the new ``text`` and ``logprobs``, the latter from ``text_offset`` on
        (None: nothing to send yet)."""

    def opening_chunk_choices(self, num_choices: int) -> list[BaseModel]:
        """Choices streamed before any text."""
        return []


class CompletionShape(ResponseShape):
    id_prefix = "cmpl"
    response_model = CompletionResponse
    chunk_model = CompletionResponse

    def choice(self, index: int, text: str, logprobs: LogprobEntries, finish_reason: str | None) -> CompletionChoice:
        return self.chunk_choice(index, text, logprobs, 0, finish_reason)

    def chunk_choice(
        self, index: int, text: str, logprobs: LogprobEntries, text_offset: int, finish_reason: str | None
    ) -> CompletionChoice:
        formatted = completion_logprobs(logprobs, text_offset) if self.want_logprobs else None
        return CompletionChoice(index=index, text=text, logprobs=formatted, finish_reason=finish_reason)


class ChatShape(ResponseShape):
    id_prefix = "chatcmpl"
    response_model = ChatCompletionResponse
    chunk_model = ChatCompletionChunk

    def choice(self, index: int, text: str, logprobs: LogprobEntries, finish_reason: str | None) -> ChatChoice:
        message = ChatChoiceMessage(content=text)
        return ChatChoice(index=index, message=message, logprobs=self._logprobs(logprobs), finish_reason=finish_reason)

    def chunk_choice(
        self, index: int, text: str, logprobs: LogprobEntries, text_offset: int, finish_reason: str | None
    ) -> ChatChunkChoice:
        delta = ChatDelta(content=text)
        return ChatChunkChoice(index=index, delta=delta, logprobs=self._logprobs(logprobs), finish_reason=finish_reason)

    def opening_chunk_choices(self, num_choices: int) -> list[ChatChunkChoice]:
        """OpenAI opens each chat choice's stream with the role and empty content."""
        return [ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content="")) for i in range(num_choices)]

    def _logprobs(self, entries: LogprobEntries) -> dict[str, Any] | None:
        return chat_logprobs(entries) if self.want_logprobs else None
