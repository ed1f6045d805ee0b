"""How tool calls and tool results are spelled in the model's text: the Hermes / Qwen2.5 format.

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

This is the format of the ChatML models moeframe serves (Qwen2.5, Qwen3,
Hermes 2 Pro; the tiny presets' ChatML too): vLLM parses it with its
``hermes`` tool parser, SGLang with its ``qwen25`` detector, and xgrammar's
built-in "qwen" structural tag spells the same begin and end strings. Each
call's ``begin`` names its function, so once the model has written the
begin the name is fixed and only the arguments are left to generate (the
structural-tag split SGLang uses). Results go back to the model as
``<tool_response>`` blocks, as Qwen2.5's template writes them.

A second format (Llama 3's JSON, Mistral's ``[TOOL_CALLS]``) would be a
second instance of :class:`ToolCallFormat`, chosen by the chat template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolCallFormat:
    trigger: str
    begin_prefix: str  # the begin of a call up to its function name
    begin_suffix: str  # after the name, before the arguments
    end: str  # after the arguments
    separator: str  # between consecutive calls
    response_open: str
    response_close: str

    def begin(self, name: str) -> str:
        return f"{self.begin_prefix}{json.dumps(name)}{self.begin_suffix}"

    def call_text(self, name: str, arguments_json: str) -> str:
        return self.begin(name) + arguments_json + self.end

    def response_text(self, content: str) -> str:
        return f"{self.response_open}{content}{self.response_close}"

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        """The tool section of a system message, for chat templates that do not render ``tools`` themselves."""
        listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
        return (
            "# Tools\n\n"
            "You may call the functions below. Each one's signature is a JSON object on its own line "
            "inside <tools></tools>:\n"
            f"<tools>\n{listed}\n</tools>\n\n"
            "To call one, write its name and its arguments (a JSON object) like this:\n"
            + self.call_text("<function name>", "<arguments>").replace('"<function name>"', "<function name>")
        )


HERMES = ToolCallFormat(
    trigger="<tool_call>",
    begin_prefix='<tool_call>\n{"name": ',
    begin_suffix=', "arguments": ',
    end="}\n</tool_call>",
    separator="\n",
    response_open="<tool_response>\n",
    response_close="\n</tool_response>",
)
