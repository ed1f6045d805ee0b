"""Tool calling through the official openai client: OpenAI's weather example, named / required / auto, streamed and whole.

The session model has random weights, so on ``"auto"`` it will not choose a
tool for a reason: those tests check the reply is well formed either way.
The constrained path is checked with named and required choices, whose
calls must validate against the tool's schema whatever the weights.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from openai_server import MODEL, Served, assert_no_leaked_slots

# OpenAI's weather example; the location is bounded so that a random-weight model finishes the string
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City and country, e.g. Paris, France", "maxLength": 16},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "unit"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a UTC offset",
        "parameters": {
            "type": "object",
            "properties": {"utc_offset": {"type": "integer", "minimum": -12, "maximum": 14}},
            "required": ["utc_offset"],
        },
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}
QUESTION = [{"role": "user", "content": "What's the weather like in Paris today?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def assert_valid_call(call, allowed: set[str]) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in allowed
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_tool_choice_returns_a_call_whose_arguments_validate(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER, CLOCK], tool_choice=NAMED, max_tokens=80, temperature=0
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert_valid_call(call, {"get_weather"})


def test_named_tool_choice_streams_openai_deltas_that_add_up_to_the_whole_reply(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice=NAMED, max_tokens=80, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    first = [d for d in deltas if d.id is not None]
    assert [d.index for d in first] == list(range(len(whole)))
    for d in first:  # a call opens with its id, type and name; later pieces carry argument text only
        assert d.type == "function" and d.function.name == "get_weather"
    for d in deltas:
        if d.id is None:
            assert d.function.name is None and d.function.arguments
    arguments = ["".join(d.function.arguments for d in deltas if d.index == i) for i in range(len(whole))]
    assert arguments == [c.function.arguments for c in whole]
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]


def test_the_raw_stream_ends_with_the_tool_calls_finish_then_done(served: Served) -> None:
    body = {"model": MODEL, "messages": QUESTION, "tools": [WEATHER], "tool_choice": NAMED, "max_tokens": 80,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body, timeout=60) as response:
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    opening = next(d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or [])
    assert set(opening) == {"index", "id", "type", "function"} and opening["function"]["name"] == "get_weather"
    later = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []][1:]
    assert all(set(d) == {"index", "function"} and set(d["function"]) == {"arguments"} for d in later)


def test_the_clients_stream_helper_assembles_the_same_calls(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice=NAMED, max_tokens=80, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls
    with client.chat.completions.stream(**kwargs) as stream:
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in streamed] == [
        (c.function.name, c.function.arguments) for c in whole
    ]


@pytest.mark.parametrize("seed", range(3))
def test_required_without_parallel_calls_makes_exactly_one_valid_call(client: openai.OpenAI, seed: int) -> None:
    out = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=[WEATHER, CLOCK],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=80,
        temperature=1.0,
        seed=seed,
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    assert_valid_call(choice.message.tool_calls[0], {"get_weather", "get_time"})


def assemble(chunks: list) -> tuple[str | None, list[tuple[str, str]], str | None]:
    """A streamed choice put together as a client does: its content, its calls (name, arguments), its finish reason."""
    content, names, arguments, reason = "", {}, {}, None
    for chunk in chunks:
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for d in choice.delta.tool_calls or []:
            if d.function.name is not None:
                names[d.index] = d.function.name
            arguments[d.index] = arguments.get(d.index, "") + (d.function.arguments or "")
        reason = choice.finish_reason or reason
    return content or None, [(names[i], arguments[i]) for i in sorted(names)], reason


def test_auto_reply_is_well_formed_text_or_calls(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, messages=QUESTION, tools=[WEATHER, CLOCK], tool_choice="auto", max_tokens=24, temperature=0)
    choice = client.chat.completions.create(**kwargs).choices[0]
    for call in choice.message.tool_calls or []:
        assert_valid_call(call, {"get_weather", "get_time"})
    if choice.message.tool_calls:
        assert choice.finish_reason in ("tool_calls", "length")
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")
    streamed = assemble(list(client.chat.completions.create(**kwargs, stream=True)))
    calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
    assert streamed == (choice.message.content, calls, choice.finish_reason)


def test_each_of_n_sampled_choices_has_its_own_calls_whole_and_streamed(client: openai.OpenAI) -> None:
    kwargs = dict(
        model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice=NAMED, max_tokens=80, temperature=1.0, seed=7, n=3
    )
    whole = client.chat.completions.create(**kwargs).choices
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    for i, choice in enumerate(whole):
        for call in choice.message.tool_calls:
            assert_valid_call(call, {"get_weather"})
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
        assert assemble([c for c in chunks if c.choices[0].index == i]) == (None, calls, "tool_calls")


def test_tool_choice_none_answers_in_text(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice="none", max_tokens=8, temperature=0
    )
    assert out.choices[0].message.tool_calls is None and out.choices[0].finish_reason in ("stop", "length")


def test_a_conversation_with_a_call_and_its_result_continues(client: openai.OpenAI) -> None:
    """OpenAI's round trip: the assistant's call and the tool's result go back in, and the model answers."""
    call = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice=NAMED, max_tokens=80, temperature=0
    ).choices[0].message
    messages = [
        *QUESTION,
        call.model_dump(exclude_none=True),
        *[
            {"role": "tool", "tool_call_id": c.id, "content": json.dumps({"temperature": 21, "unit": "celsius"})}
            for c in call.tool_calls
        ],
    ]
    out = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], max_tokens=8, temperature=0)
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert out.usage.prompt_tokens > 0


BAD = {
    "unknown_tool_type": ({"tools": [{"type": "code_interpreter"}]}, "tools"),
    "unknown_function_field": (
        {"tools": [{"type": "function", "function": {**WEATHER["function"], "cache": True}}]},
        "tools",
    ),
    "bad_function_name": ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools"),
    "repeated_function": ({"tools": [WEATHER, WEATHER]}, "tools"),
    "named_function_not_in_tools": (
        {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
        "tool_choice",
    ),
    "unknown_tool_choice": ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    "tool_choice_without_tools": ({"tool_choice": "required"}, "tool_choice"),
    "tools_and_response_format": ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "tool_choice"),
    "invalid_parameters_schema": (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "no-such-type"}}}]},
        "tools",
    ),
    "parameters_not_an_object": (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], "tool_choice": "none"},
        "tools",
    ),
    "unsupported_schema_keyword": (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}]},
        None,
    ),
    "legacy_functions": ({"functions": [WEATHER["function"]]}, "functions"),
    "tool_turn_without_call_id": ({"messages": [*QUESTION, {"role": "tool", "content": "21C"}]}, "messages"),
    "arguments_not_json": (
        {
            "messages": [
                *QUESTION,
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{"}}],
                },
            ]
        },
        "messages",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_unsupported_or_invalid_tool_requests_are_400_naming_the_field(served: Served, case: str) -> None:
    extra, param = BAD[case]
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4, **extra}
    response = httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:  # named as the error's param, or in its message (a field no endpoint defines)
        assert error["param"] == param or f"'{param}'" in error["message"], error
    assert_no_leaked_slots(served.wait_idle())


def test_tools_on_the_completions_endpoint_are_refused(served: Served) -> None:
    body = {"model": MODEL, "prompt": "hi", "tools": [WEATHER]}
    response = httpx.post(f"{served.url}/v1/completions", json=body)
    assert response.status_code == 400 and "'tools' is not supported" in response.json()["error"]["message"]
