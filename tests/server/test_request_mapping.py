"""Pure pieces of the server: request -> SamplingParams, streamed text hold-back, error bodies, chat turns."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moeframe.server.async_engine import TextDelta
from moeframe.server.chat_format import CHATML_TEMPLATE, ChatFormat, message_text
from moeframe.server.errors import APIError
from moeframe.server.protocol import ChatCompletionRequest, CompletionRequest
from moeframe.server.sampling import sampling_params


def test_n_choices_get_consecutive_seeds() -> None:
    body = CompletionRequest(model="m", prompt="x", n=3, seed=40, temperature=0.7, stop="END")
    params = sampling_params(body, 5, None)
    assert [p.seed for p in params] == [40, 41, 42]
    assert all(p.max_new_tokens == 5 and p.temperature == 0.7 and p.stop == ["END"] for p in params)
    assert len({id(p) for p in params}) == 3  # each choice owns its params


def test_response_format_maps_to_engine_constraints() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    (p,) = sampling_params(ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], response_format=fmt), 4, None)
    assert p.constraint_kwargs == {"json_schema": schema}
    (p,) = sampling_params(CompletionRequest(model="m", prompt="x", response_format={"type": "json_object"}), 4, None)
    assert p.constraint_kwargs == {"json_object": True}
    (p,) = sampling_params(CompletionRequest(model="m", prompt="x", choices=["a", "b"]), 4, None)
    assert p.constraint_kwargs == {"choices": ["a", "b"]}


def test_priority_reaches_every_choice_and_defaults_to_zero() -> None:
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], priority=7, n=2)
    assert [p.priority for p in sampling_params(chat, 4, None)] == [7, 7]
    assert sampling_params(CompletionRequest(model="m", prompt="x"), 4, None)[0].priority == 0


def test_two_constraints_in_one_request_are_refused() -> None:
    with pytest.raises(APIError, match="at most one"):
        sampling_params(CompletionRequest(model="m", prompt="x", regex="a", response_format={"type": "json_object"}), 4, None)


def test_chat_end_of_turn_ids_stop_each_choice() -> None:
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], stop_token_ids=[7], n=2)
    assert [p.stop_token_ids for p in sampling_params(body, 4, None, [2])] == [[7, 2], [7, 2]]


@pytest.mark.parametrize("field,value", [("max_tokens", 0), ("max_tokens", -1), ("temperature", -0.1), ("top_p", 0), ("n", 0)])
def test_out_of_range_fields_fail_validation(field: str, value: float) -> None:
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt="x", **{field: value})


def test_text_delta_holds_back_a_possible_stop_string_start() -> None:
    delta = TextDelta(["STOP"])
    assert delta.next("abcST", finished=False) == "abc"  # "ST" could grow into "STOP"
    assert delta.next("abcSTx", finished=False) == "STx"  # "STx" cannot
    assert delta.next("abcSTxS", finished=False) == ""
    assert delta.next("abcSTxSy", finished=True) == "Sy"
    assert delta.sent == "abcSTxSy"


def test_text_delta_waits_for_a_complete_utf8_character() -> None:
    delta = TextDelta([])
    assert delta.next("caf\ufffd", finished=False) == "caf"
    assert delta.next("café", finished=False) == "é"
    assert delta.next("café", finished=True) == ""


def test_role_affixes_rebuild_the_rendered_conversation() -> None:
    chat = ChatFormat(CHATML_TEMPLATE)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    pieces = []
    for m in messages:
        before, after = chat.role_affixes(m["role"])
        pieces.append(before + m["content"] + after)
    assert "".join(pieces) + chat.generation_prompt() == chat.render(messages)


def test_message_text_joins_text_parts_and_refuses_images() -> None:
    assert message_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "ab"
    with pytest.raises(ValueError, match="image_url"):
        message_text([{"type": "image_url", "image_url": {"url": "x"}}])


@pytest.mark.parametrize("field,value", [("echo", True), ("presence_penalty", 0.5), ("logit_bias", {"5": 10})])
def test_unsupported_fields_are_refused_not_ignored(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=f"'{field}' is not supported"):
        CompletionRequest(model="m", prompt="x", **{field: value})
    CompletionRequest(model="m", prompt="x", **{field: type(value)()})  # the neutral value is accepted
