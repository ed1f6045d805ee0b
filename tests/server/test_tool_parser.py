"""The tool-call parser and the tool prompt, without a server: hand-made replies and conversations."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moeframe.server.chat_format import CHATML_TEMPLATE, ChatFormat
from moeframe.server.errors import APIError
from moeframe.server.protocol import ChatCompletionRequest
from moeframe.server.tool_calls import ToolPlan
from moeframe.server.tool_format import HERMES
from moeframe.server.tool_parser import ToolCallParser

NAMES = ("get_weather", "get_time")


def call(name: str, arguments: dict) -> str:
    return HERMES.call_text(name, json.dumps(arguments, separators=(",", ":")))


def parse_whole(text: str) -> ToolCallParser:
    parser = ToolCallParser(HERMES, NAMES)
    parser.feed(text, finished=True)
    return parser


def test_text_without_a_call_is_the_content_exactly() -> None:
    parser = parse_whole("  Hello <b>world</b> <tool and spaces  ")
    assert parser.content == "  Hello <b>world</b> <tool and spaces  " and parser.calls == []
    assert parser.finish_reason("stop") == "stop"


def test_calls_and_text_split_apart_and_whitespace_around_calls_is_dropped() -> None:
    text = "Let me check. \n" + call("get_weather", {"city": "Oslo"}) + "\n" + call("get_time", {"zone": 2}) + "\n Done."
    parser = parse_whole(text)
    assert parser.content == "Let me check.Done."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in parser.calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_time", {"zone": 2}),
    ]
    assert len({c.id for c in parser.calls}) == 2
    assert parser.finish_reason("stop") == "tool_calls"


def test_a_call_cut_short_keeps_its_partial_arguments_and_the_engines_reason() -> None:
    parser = parse_whole(call("get_weather", {"city": "Oslo"})[: -len(HERMES.end) - 2])
    assert parser.calls[0].function.name == "get_weather"
    assert parser.calls[0].function.arguments == '{"city":"Oslo'
    assert parser.finish_reason("length") == "length"


def test_a_trigger_that_opens_no_known_call_is_text() -> None:
    text = '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>'
    parser = parse_whole(text)
    assert parser.calls == [] and parser.content == text


TEXT = st.text(alphabet="ab <>_tolc\n", max_size=12).filter(lambda t: HERMES.trigger not in t)
CALL = st.builds(
    call, st.sampled_from(NAMES), st.dictionaries(st.sampled_from(["city", "zone"]), st.text(max_size=6), max_size=2)
)


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(st.one_of(TEXT, CALL), max_size=5), cuts=st.lists(st.integers(0, 400), max_size=12))
def test_streamed_pieces_add_up_to_the_whole_parse(parts: list[str], cuts: list[int]) -> None:
    """Any split of a reply into stream pieces gives the content and calls of the whole reply."""
    text = "".join(parts)
    whole = parse_whole(text)
    parser = ToolCallParser(HERMES, NAMES)
    content, names, arguments = "", {}, {}
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:] + [len(text)])):
        delta = parser.feed(text[lo:hi], finished=i == len(bounds) - 1)
        content += delta.content
        for d in delta.calls:
            if d.id is not None:
                names[d.index] = d.function.name
            arguments[d.index] = arguments.get(d.index, "") + (d.function.arguments or "")
    assert content == whole.content
    assert [(names[i], arguments[i]) for i in sorted(names)] == [(c.function.name, c.function.arguments) for c in whole.calls]
    expected_calls = [p for p in parts if p.startswith(HERMES.trigger)]
    assert [HERMES.call_text(c.function.name, c.function.arguments) for c in whole.calls] == expected_calls


def request(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", **fields)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ROUND_TRIP = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo and Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "3C"},
    {"role": "tool", "tool_call_id": "c2", "content": "18C"},
]


def test_fallback_prompt_lists_tools_writes_calls_and_wraps_results() -> None:
    body = request(messages=ROUND_TRIP, tools=[WEATHER])
    prompt = ToolPlan.of(body).render(ChatFormat(CHATML_TEMPLATE), body.messages)
    calls = "\n".join(HERMES.call_text("get_weather", json.dumps({"city": city})) for city in ("Oslo", "Rome"))
    expected_turns = [
        {"role": "system", "content": "Be brief.\n\n" + HERMES.system_prompt([WEATHER])},
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "assistant", "content": calls},
        {"role": "user", "content": "<tool_response>\n3C\n</tool_response>\n<tool_response>\n18C\n</tool_response>"},
    ]
    assert prompt == ChatFormat(CHATML_TEMPLATE).render(expected_turns)
    assert json.dumps(WEATHER) in prompt


TOOL_TEMPLATE = (
    "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}Call with <tool_call>.{% endif %}"
    "{% for m in messages %}[{{ m.role }}]{{ m.content }}"
    "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}"
    "{% if m.tool_call_id %}(for {{ m.tool_call_id }}){% endif %}{% endfor %}"
)


def test_a_template_that_reads_tools_gets_definitions_calls_as_objects_and_tool_turns() -> None:
    chat = ChatFormat(TOOL_TEMPLATE)
    assert chat.supports_tools and not ChatFormat(CHATML_TEMPLATE).supports_tools
    body = request(messages=ROUND_TRIP, tools=[WEATHER])
    prompt = ToolPlan.of(body).render(chat, body.messages)
    assert prompt == (
        "TOOLS:get_weather;Call with <tool_call>.[system]Be brief.[user]Weather in Oslo and Rome?"
        '[assistant]CALL get_weather {"city": "Oslo"}CALL get_weather {"city": "Rome"}[tool]3C(for c1)[tool]18C(for c2)'
    )


def test_a_template_teaching_another_call_format_is_refused_unless_no_call_can_be_made() -> None:
    chat = ChatFormat(TOOL_TEMPLATE.replace("<tool_call>", "<|python_tag|>"))
    with pytest.raises(APIError, match="format other than <tool_call>"):
        ToolPlan.of(request(messages=ROUND_TRIP, tools=[WEATHER])).render(chat, request(messages=ROUND_TRIP).messages)
    body = request(messages=ROUND_TRIP, tools=[WEATHER], tool_choice="none")
    assert ToolPlan.of(body).render(chat, body.messages).startswith("TOOLS:get_weather;")


def test_plain_chat_renders_as_before() -> None:
    messages = [{"role": "user", "content": "hi"}]
    body = request(messages=messages)
    assert ToolPlan.of(body).render(ChatFormat(CHATML_TEMPLATE), body.messages) == ChatFormat(CHATML_TEMPLATE).render(messages)


def test_plans_of_each_tool_choice() -> None:
    clock = {"type": "function", "function": {"name": "get_time"}}
    auto = ToolPlan.of(request(messages=ROUND_TRIP, tools=[WEATHER, clock]))
    assert auto.callable == ("get_weather", "get_time") and auto.free_text
    named = ToolPlan.of(
        request(messages=ROUND_TRIP, tools=[WEATHER, clock], tool_choice={"type": "function", "function": {"name": "get_time"}})
    )
    tag = named.structural_tag()
    assert named.callable == ("get_time",) and not tag.free_text
    assert tag.tags[0].schema == {"type": "object", "properties": {}, "additionalProperties": False}
    single = ToolPlan.of(request(messages=ROUND_TRIP, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False))
    assert single.structural_tag().stop_after_first and not single.free_text
    assert ToolPlan.of(request(messages=ROUND_TRIP, tools=[WEATHER], tool_choice="none")).callable == ()
