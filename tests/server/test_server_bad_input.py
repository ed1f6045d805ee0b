"""Bad requests get HTTP 400 with an OpenAI error body; the server keeps serving and leaks no KV slots."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai_server import MODEL, Served, assert_no_leaked_slots

OVER_CONTEXT = "word " * 2000  # the tiny model's context is 1024 tokens


def assert_openai_error(response: httpx.Response, param: str | None = None) -> None:
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param


def test_malformed_json_body_is_400(served: Served) -> None:
    response = httpx.post(
        f"{served.url}/v1/completions", content=b'{"model": "x", "prompt": ', headers={"content-type": "application/json"}
    )
    assert_openai_error(response)


def test_body_missing_a_required_field_is_400(served: Served) -> None:
    response = httpx.post(f"{served.url}/v1/chat/completions", json={"model": MODEL})
    assert_openai_error(response, param="messages")


BAD_BODIES = {
    "unknown_model": ({"model": "no-such-model", "prompt": "hi"}, "model"),
    "negative_max_tokens": ({"model": MODEL, "prompt": "hi", "max_tokens": -3}, "max_tokens"),
    "invalid_regex": ({"model": MODEL, "prompt": "hi", "regex": "([a-z"}, None),
    "invalid_schema": (
        {
            "model": MODEL,
            "prompt": "hi",
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}},
        },
        None,
    ),
    "prompt_over_context": ({"model": MODEL, "prompt": OVER_CONTEXT, "max_tokens": 4}, None),
    "prompt_plus_max_tokens_over_context": ({"model": MODEL, "prompt": "hi", "max_tokens": 5000}, None),
    "two_constraints": ({"model": MODEL, "prompt": "hi", "regex": "a", "choices": ["a", "b"]}, None),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_request_is_400_and_server_keeps_serving(served: Served, case: str) -> None:
    body, param = BAD_BODIES[case]
    assert_openai_error(httpx.post(f"{served.url}/v1/completions", json=body), param)
    ok = httpx.post(f"{served.url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
    assert ok.status_code == 200
    assert_no_leaked_slots(served.wait_idle())


def test_openai_client_raises_bad_request_for_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-nothing", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 400
    assert caught.value.code == "model_not_found"


def test_streaming_request_with_a_bad_constraint_is_400_before_streaming(client: openai.OpenAI, served: Served) -> None:
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="hi", stream=True, extra_body={"regex": "(("})
    assert_no_leaked_slots(served.wait_idle())
