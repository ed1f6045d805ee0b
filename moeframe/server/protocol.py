"""The OpenAI wire format: request bodies (validated by pydantic) and response bodies.

Field names, defaults and shapes follow the OpenAI API reference for
completions and chat completions; extra fields that SGLang and vLLM accept
beside them (``regex``, ``choices``, ``top_k``, ``ignore_eos``,
``stop_token_ids``) are accepted here too, as is SGLang's and vLLM's
``return_routed_experts`` (default false; the engine must record routes,
``runner.routes=true``): each choice then carries ``routed_experts``, the
[tokens, MoE layers, k] expert ids of every token the model computed (the
prompt, then each generated token but the last), and each stream chunk the
rows that became final since the chunk before, so that a stream's chunks
concatenate to the whole. A body that does not validate
becomes an HTTP 400 with an OpenAI error body (see ``errors.py``).

Types are strict, as OpenAI's own API checks them: a boolean is ``true`` or
``false`` (not ``"yes"`` or ``1``), a number is not a string, integers fit
64 bits, floats are finite, and every string is valid Unicode (JSON can
spell a lone surrogate, which no tokenizer can encode). Limits that a
server's operator sets (prompt length, ``n``, ...) are checked by
``limits.py``, after the body has its types.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from moeframe.server.tool_protocol import DeltaToolCall, ToolCall, ToolChoice, ToolDefinition

def fits_64_bits(value: int) -> int:
    if not -(2**63) <= value < 2**63:
        raise PydanticCustomError("int64", "Input should be an integer that fits in 64 bits (signed)")
    return value


# JSON integers are unbounded; the engine's (seeds, token ids, counts) are 64-bit
Int64 = Annotated[int, AfterValidator(fits_64_bits)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


def first_invalid_string(value: Any) -> str | None:
    """The path of the first string in a JSON value that is not valid Unicode (a lone surrogate), else None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return path or "body"
        elif isinstance(item, dict):
            for key, child in item.items():
                where = f"{path}.{key}" if path else str(key)
                stack.append((where, key))
                stack.append((where, child))
        elif isinstance(item, list):
            stack.extend((f"{path}.{i}", child) for i, child in enumerate(item))
    return None


class RequestBody(_Body):
    """A whole request body: its strings are checked for valid Unicode once, wherever they are."""

    @model_validator(mode="before")
    @classmethod
    def refuse_invalid_unicode(cls, raw: Any) -> Any:
        where = first_invalid_string(raw)
        if where is not None:
            raise PydanticCustomError(
                "invalid_unicode", "{where} is not valid Unicode (it holds a lone surrogate)", {"where": where}
            )
        return raw


# OpenAI fields this server does not implement, with the values that ask for nothing (accepted);
# an endpoint that implements one lists it in its ``implemented`` (chat: tools)
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "echo": (False,),
    "best_of": (1,),
    "suffix": ("",),
    "logit_bias": ({},),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "tools": ([],),
    "functions": ([],),
    "function_call": ("none",),
    "tool_choice": ("none",),
}


class JsonSchemaFormat(_Body):
    name: str = "schema"
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingFields(RequestBody):
    implemented: ClassVar[frozenset[str]] = frozenset()
    model: str
    max_tokens: Int64 | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: Int64 = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    seed: Int64 | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # beyond OpenAI, as SGLang and vLLM accept them
    top_k: Int64 = -1
    ignore_eos: bool = False
    stop_token_ids: list[Int64] = Field(default_factory=list)
    regex: str | None = None
    choices: list[str] | None = None
    return_routed_experts: bool = False
    priority: Int64 = 0  # larger first under scheduler=priority (SGLang's request field)

    @model_validator(mode="before")
    @classmethod
    def refuse_unsupported(cls, raw: Any) -> Any:
        """A field we would otherwise ignore silently is refused, so no client gets a silently wrong answer."""
        if isinstance(raw, dict):
            for key, neutral in UNSUPPORTED.items():
                if key not in cls.implemented and raw.get(key) is not None and raw[key] not in neutral:
                    raise ValueError(f"'{key}' is not supported by this server")
        return raw


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[Int64] | list[list[Int64]]
    max_tokens: Int64 | None = Field(default=16, ge=1)
    logprobs: Int64 | None = Field(default=None, ge=0, le=20)
    echo: bool = False


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the call it answers


class ChatCompletionRequest(SamplingFields):
    implemented = frozenset({"tools", "tool_choice"})
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: Int64 | None = Field(default=None, ge=0, le=20)
    max_completion_tokens: Int64 | None = Field(default=None, ge=1)
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now_s() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: dict[str, int] | None = None


ChoiceT = TypeVar("ChoiceT", bound=BaseModel)


class ResponseEnvelope(BaseModel, Generic[ChoiceT]):
    """The fields every completion body and stream chunk carries; a subclass names its ``object`` and choice type."""

    id: str
    object: str
    created: int
    model: str
    choices: list[ChoiceT]
    usage: Usage | None = None


class RoutedChoice(BaseModel):
    """A choice that carries ``routed_experts`` (set as an extra field) only when the request asked for them."""

    model_config = ConfigDict(extra="allow")


class CompletionChoice(RoutedChoice):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class CompletionResponse(ResponseEnvelope[CompletionChoice]):
    """Both the whole response and each stream chunk of /v1/completions (OpenAI uses one shape for both)."""

    object: str = "text_completion"


class ChatChoiceMessage(BaseModel):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(RoutedChoice):
    index: int
    message: ChatChoiceMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(ResponseEnvelope[ChatChoice]):
    object: str = "chat.completion"


class ChatDelta(BaseModel):
    role: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(RoutedChoice):
    index: int
    delta: ChatDelta
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(ResponseEnvelope[ChatChunkChoice]):
    object: str = "chat.completion.chunk"


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "moeframe"
    max_model_len: int


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ScoreRequest(RequestBody):
    """Beyond OpenAI: token log-probabilities of continuations of a prompt (the DSL's ``select``)."""

    prompt: str
    continuations: list[str] = Field(min_length=1)
