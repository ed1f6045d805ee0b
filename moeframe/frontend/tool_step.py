"""Running a ``tool_call``: the model writes a call, the Python function runs, its result is written back.

The call is spelled as the server's tool calling spells it
(:mod:`moeframe.server.tool_format`, the Hermes / Qwen2.5 format), so a
program's text reads like a chat with tool calls:

    <tool_call>
    {"name": "get_weather", "arguments": {"city":"Paris"}}
    </tool_call>

The function's name (when there are several) is generated under a
``choices`` constraint and its arguments under the function's JSON schema,
through the backend's ordinary ``generate``, so the in-process and the HTTP
backends both run it. Arguments that did not finish within ``max_tokens``
or do not validate raise; a function is never called with arguments it
did not declare. The result becomes a ``<tool_response>`` block (text as
is, anything else as JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema

from moeframe.frontend.backend import Backend
from moeframe.frontend.ir import Gen, ToolCall
from moeframe.server.tool_format import HERMES


@dataclass
class ToolOutcome:
    call_text: str  # the call as the model wrote it, in the format's spelling
    call: dict[str, Any]  # {"name", "arguments"}
    result: Any
    response_text: str  # the result as a <tool_response> block


def result_text(result: Any) -> str:
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)


def run_tool_call(backend: Backend, prompt: str, node: ToolCall) -> ToolOutcome:
    names = [schema["name"] for schema in node.schemas]
    text = HERMES.begin_prefix
    if len(names) == 1:
        quoted = json.dumps(names[0])
    else:
        options = [json.dumps(n) for n in names]
        choose = Gen(f"{node.name}_function", max(len(o.encode()) for o in options) + 1, node.temperature,
                     seed=node.seed, choices=options)
        quoted = backend.generate(prompt + text, choose, [])
    index = names.index(json.loads(quoted))
    schema = node.schemas[index]["parameters"]
    text += quoted + HERMES.begin_suffix
    write = Gen(f"{node.name}_arguments", node.max_tokens, node.temperature, seed=node.seed, json_schema=schema)
    arguments_json = backend.generate(prompt + text, write, [])
    try:
        arguments = json.loads(arguments_json)
    except json.JSONDecodeError:
        raise RuntimeError(
            f"the arguments of {names[index]} did not finish within max_tokens={node.max_tokens}: {arguments_json!r}"
        ) from None
    jsonschema.validate(arguments, schema)
    result = node.tools[index](**arguments)
    return ToolOutcome(
        call_text=text + arguments_json + HERMES.end,
        call={"name": names[index], "arguments": arguments},
        result=result,
        response_text=HERMES.response_text(result_text(result)),
    )
