"""``tool_call``: a program lets the model call a Python function and goes on with its result, on both backends."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import pytest

from moeframe.frontend import Backend, EngineBackend, ServerBackend, assistant, function, gen, tool_call, user
from moeframe.frontend.tool_schema import function_schema
from moeframe.server.tool_format import HERMES


def get_weather(city: Literal["Paris", "Oslo", "Rome"], unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """The weather now in a city.

    More text that is not the description.
    """
    return {"city": city, "temperature": {"Paris": 21, "Oslo": 3, "Rome": 25}[city], "unit": unit}


def get_time(utc_offset: Literal[-1, 0, 1]) -> str:
    return f"12:00 at UTC{utc_offset:+d}"


def test_a_signature_becomes_the_schema_of_its_arguments() -> None:
    def f(name: str, count: int, ratio: float | None, tags: list[str], flag: bool = False, *, mode: Literal["a", 1] = "a"):
        pass

    assert function_schema(f) == {
        "name": "f",
        "description": "",
        "parameters": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "count": {"type": "integer"},
                "ratio": {"anyOf": [{"type": "number"}, {"type": "null"}]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "flag": {"type": "boolean"},
                "mode": {"enum": ["a", 1]},
            },
            "required": ["name", "count", "ratio", "tags"],
            "additionalProperties": False,
        },
    }
    assert function_schema(get_weather)["description"] == "The weather now in a city."


def no_annotation(city):
    return city


def star_args(*cities: str):
    return cities


def a_class(when: object):
    return when


@pytest.mark.parametrize("fn,message", [(no_annotation, "no type annotation"), (star_args, "keyword arguments"),
                                        (a_class, "has no JSON schema")])
def test_a_signature_without_a_schema_is_refused_when_the_step_is_made(fn, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        tool_call("x", fn)


@function
def weather_chat(s, question: str) -> None:
    s += user(question)
    s += assistant(tool_call("weather", get_weather))
    s += assistant("It is " + str(s["weather"]["temperature"]) + " degrees. " + gen("comment", max_tokens=4))


def test_a_program_calls_a_function_in_a_chat_and_uses_its_result(backend: Backend) -> None:
    s = weather_chat.run("What's the weather in Paris?", backend=backend)
    call = s["weather_call"]
    assert call["name"] == "get_weather"
    jsonschema.validate(call["arguments"], function_schema(get_weather)["parameters"])
    assert s["weather"] == get_weather(**call["arguments"])
    messages = s.messages()
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1]["content"] == HERMES.call_text("get_weather", json.dumps(call["arguments"], separators=(",", ":")))
    assert messages[2]["content"] == HERMES.response_text(json.dumps(s["weather"]))
    assert messages[3]["content"].startswith(f"It is {s['weather']['temperature']} degrees. ")
    assert s.text() == backend.chat.render(messages, add_generation_prompt=False)


def test_both_backends_write_the_same_program_text(engine_backend: EngineBackend, server_backend: ServerBackend) -> None:
    question = "What's the weather in Oslo?"
    assert weather_chat.run(question, backend=engine_backend).text() == weather_chat.run(question, backend=server_backend).text()


@pytest.mark.parametrize("seed", range(3))
def test_the_model_chooses_among_several_functions_and_the_chosen_one_runs(engine_backend: EngineBackend, seed: int) -> None:
    ran: list[str] = []

    def weather(city: Literal["Paris", "Oslo"]) -> str:
        ran.append("weather")
        return "sunny"

    def clock(utc_offset: Literal[-1, 0, 1]) -> str:
        ran.append("clock")
        return get_time(utc_offset)

    @function
    def program(s) -> None:
        s += "Question: weather or time?\n" + tool_call("answer", [weather, clock], temperature=1.0, seed=seed)
        s += "\nSo: " + gen("so", max_tokens=3)

    s = program.run(backend=engine_backend)
    assert ran == [s["answer_call"]["name"]]
    expected = {"weather": weather, "clock": clock}[ran[0]]
    ran.clear()
    assert s["answer"] == expected(**s["answer_call"]["arguments"])
    text = s.text()
    # outside a role the result follows the call at once
    assert HERMES.end + HERMES.separator + HERMES.response_text(s["answer"]) + "\nSo: " in text


def test_arguments_cut_by_max_tokens_fail_the_program_instead_of_calling(engine_backend: EngineBackend) -> None:
    called: list[str] = []

    def echo(text: str) -> str:
        called.append(text)
        return text

    @function
    def program(s) -> None:
        s += "Say something long.\n" + tool_call("echo", echo, max_tokens=2)

    with pytest.raises(RuntimeError, match="did not finish within max_tokens=2"):
        program.run(backend=engine_backend)
    assert called == []
