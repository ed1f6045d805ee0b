"""Tool calling, request side: ``tools`` and ``tool_choice`` -> a constraint, tool turns -> the prompt.

Generation follows SGLang's function-call design: the tools become a
structural tag (:mod:`moeframe.constrain.structural_tag`) that the engine's
configured constraint backend enforces, so a call the model writes always
names one of the tools and its arguments always validate against that
tool's ``parameters`` schema.

- ``"auto"`` (the default with tools): free text in which ``<tool_call>``
  may only open a valid call; the model answers in words or calls.
- ``"required"``: one or more calls and nothing else.
- a named function: one or more calls of that function and nothing else.
- ``"none"``: no constraint and no parsing; the reply is text.
- ``parallel_tool_calls=false``: at most one call.

The prompt: a chat template that reads ``tools`` (Qwen2.5's, Hermes') gets
the tool definitions, the assistant turns' ``tool_calls`` (arguments as
objects, as vLLM passes them to templates) and the ``tool`` turns as they
are. Any other template (the tiny presets' plain ChatML) gets the fallback
of :mod:`moeframe.server.tool_format`: a system message listing the tools
and the call format, calls written into the assistant's text, and each run
of tool results as one user turn of ``<tool_response>`` blocks. A template
that reads ``tools`` but never writes ``<tool_call>`` teaches the model
another format, whose calls this server would not parse: a request that
lets the model call is then refused (400) instead of answered in text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema

from moeframe.constrain.structural_tag import StructuralTag, Tag
from moeframe.engine.sampling_params import SamplingParams
from moeframe.errors import RequestError
from moeframe.server.chat_format import ChatFormat, message_text
from moeframe.server.errors import APIError
from moeframe.server.protocol import ChatCompletionRequest, ChatMessage
from moeframe.server.response_shapes import ChatShape
from moeframe.server.tool_format import HERMES, ToolCallFormat
from moeframe.server.tool_parser import ToolChatShape
from moeframe.server.tool_protocol import NamedToolChoice, ToolCall, ToolDefinition

NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}


def parameters_of(tool: ToolDefinition) -> dict[str, Any]:
    return tool.function.parameters if tool.function.parameters is not None else NO_ARGUMENTS


def check_parameters(tool: ToolDefinition, where: str) -> None:
    """A function's parameters are a valid JSON schema of an object (arguments are a JSON object), whatever tool_choice."""
    schema = parameters_of(tool)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        raise APIError(f"{where}.function.parameters is not a valid JSON schema: {err.message}", param="tools") from None
    if schema.get("type", "object") != "object":
        raise APIError(f"{where}.function.parameters must describe an object, not {schema['type']!r}", param="tools")


@dataclass(frozen=True)
class ToolPlan:
    """What one chat request asked of tools; ``callable`` is empty when no call can be made."""

    tools: tuple[ToolDefinition, ...] = ()
    callable: tuple[str, ...] = ()
    free_text: bool = True
    parallel: bool = True
    format: ToolCallFormat = HERMES

    @classmethod
    def of(cls, body: ChatCompletionRequest) -> "ToolPlan":
        tools, choice = tuple(body.tools or ()), body.tool_choice
        if not tools:
            if choice not in (None, "none"):
                raise APIError("tool_choice needs tools; this request defines none", param="tool_choice")
            return cls()
        for i, tool in enumerate(tools):
            check_parameters(tool, f"tools[{i}]")
        names = [t.function.name for t in tools]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise APIError(f"tools define the function(s) {repeated} more than once", param="tools")
        if choice == "none":
            return cls(tools)
        if isinstance(choice, NamedToolChoice):
            if choice.function.name not in names:
                raise APIError(
                    f"tool_choice names the function '{choice.function.name}', which is not among the tools {names}",
                    param="tool_choice",
                )
            return cls(tools, (choice.function.name,), free_text=False, parallel=body.parallel_tool_calls)
        return cls(tools, tuple(names), free_text=choice in (None, "auto"), parallel=body.parallel_tool_calls)

    def structural_tag(self) -> StructuralTag:
        schemas = {t.function.name: parameters_of(t) for t in self.tools}
        tags = tuple(Tag(self.format.begin(name), schemas[name], self.format.end) for name in self.callable)
        return StructuralTag(
            tags,
            self.format.trigger,
            free_text=self.free_text,
            stop_after_first=not self.parallel,
            separator=self.format.separator,
        )

    def constrain(self, params: list[SamplingParams]) -> list[SamplingParams]:
        """``params`` with the calls' constraint; a request that already constrains its output is refused."""
        if not self.callable:
            return params
        tag = self.structural_tag()
        for p in params:
            if p.constraint_kwargs:
                given = ", ".join(sorted(p.constraint_kwargs))
                raise APIError(
                    f"tool calls constrain the output themselves; drop {given} or set tool_choice to 'none'",
                    param="tool_choice",
                )
            p.structural_tag = tag
        return params

    def shape(self, want_logprobs: bool) -> ChatShape:
        """The response shape: content and tool calls split apart when a call can be made, plain chat otherwise."""
        if not self.callable:
            return ChatShape(want_logprobs=want_logprobs)
        return ToolChatShape(want_logprobs=want_logprobs, format=self.format, names=self.callable)

    # ---- the prompt ----
    def render(self, chat: ChatFormat, messages: list[ChatMessage]) -> str:
        """The prompt text; RequestError for a message the format cannot take."""
        check_tool_turns(messages)
        definitions = [t.model_dump(exclude_none=True) for t in self.tools]
        if self.callable and chat.supports_tools and self.format.trigger not in chat.template_source:
            # the template teaches the model another call format (Llama 3's JSON, Mistral's [TOOL_CALLS]),
            # whose calls would come back as unparsed text
            raise APIError(
                f"this model's chat template renders tools in a format other than {self.format.trigger} calls, "
                "the only one this server parses; use tool_choice 'none'",
                param="tools",
            )
        if chat.supports_tools:
            turns = [template_turn(m) for m in messages]
            return chat.render(turns, add_generation_prompt=True, tools=definitions or None)
        turns = self.fallback_turns(messages)
        if definitions:
            section = self.format.system_prompt(definitions)
            if turns and turns[0]["role"] == "system":
                turns[0] = {"role": "system", "content": f"{turns[0]['content']}\n\n{section}"}
            else:
                turns.insert(0, {"role": "system", "content": section})
        return chat.render(turns, add_generation_prompt=True)

    def fallback_turns(self, messages: list[ChatMessage]) -> list[dict[str, str]]:
        turns: list[dict[str, str]] = []
        after_tool = False
        for message in messages:
            content = message_text(message.content)
            if message.role == "tool":
                block = self.format.response_text(content)
                if after_tool:
                    turns[-1]["content"] += "\n" + block
                else:
                    turns.append({"role": "user", "content": block})
                after_tool = True
                continue
            after_tool = False
            if message.tool_calls:
                calls = [self.format.call_text(c.function.name, arguments_text(c)) for c in message.tool_calls]
                content = self.format.separator.join(([content] if content else []) + calls)
            turns.append({"role": message.role, "content": content})
        return turns


def check_tool_turns(messages: list[ChatMessage]) -> None:
    """OpenAI's rules: only assistant turns carry tool_calls, and every tool turn names the call it answers."""
    for i, message in enumerate(messages):
        if message.tool_calls and message.role != "assistant":
            raise RequestError(f"messages[{i}] is a '{message.role}' turn with tool_calls; only assistant turns call tools")
        if message.role == "tool" and not message.tool_call_id:
            raise RequestError(f"messages[{i}] is a tool turn without tool_call_id")


def arguments_text(call: ToolCall) -> str:
    """A call's arguments as compact JSON; RequestError when the client sent arguments that are not a JSON object."""
    return json.dumps(arguments_object(call), ensure_ascii=False)


def arguments_object(call: ToolCall) -> dict[str, Any]:
    try:
        value = json.loads(call.function.arguments)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise RequestError(f"the arguments of tool call '{call.id}' are not a JSON object: {call.function.arguments!r}")
    return value


def template_turn(message: ChatMessage) -> dict[str, Any]:
    turn: dict[str, Any] = {"role": message.role, "content": message_text(message.content)}
    if message.tool_calls:
        turn["tool_calls"] = [
            {"id": c.id, "type": c.type, "function": {"name": c.function.name, "arguments": arguments_object(c)}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        turn["tool_call_id"] = message.tool_call_id
    return turn
