"""Bad requests get HTTP 400 with an OpenAI error body; the server keeps serving and leaks no KV slots."""

from __future__ import annotations

import re

import httpx
import openai
import pytest
from openai_server import MODEL, Served, assert_no_leaked_slots

OVER_CONTEXT = "word " * 2000  # the tiny model's context is 1024 tokens


def assert_openai_error(response: httpx.Response, param: str | None = None, status: int = 400) -> None:
    assert response.status_code == status
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
    "stream_as_a_string": ({"model": MODEL, "prompt": "hi", "stream": "yes"}, "stream"),
    "ignore_eos_as_a_number": ({"model": MODEL, "prompt": "hi", "ignore_eos": 1}, "ignore_eos"),
    "temperature_as_a_string": ({"model": MODEL, "prompt": "hi", "temperature": "0.5"}, "temperature"),
    "max_tokens_as_a_float": ({"model": MODEL, "prompt": "hi", "max_tokens": 2.0}, "max_tokens"),
    "seed_over_64_bits": ({"model": MODEL, "prompt": "hi", "seed": 2**70}, "seed"),
    "stop_token_id_over_64_bits": ({"model": MODEL, "prompt": "hi", "stop_token_ids": [2**64]}, "stop_token_ids"),
    "prompt_token_over_64_bits": ({"model": MODEL, "prompt": [1, 2**65]}, "prompt"),
    "empty_language_regex": ({"model": MODEL, "prompt": "hi", "regex": r"[^\s\S]", "temperature": 0.7}, None),
    "n_over_the_limit": ({"model": MODEL, "prompt": "hi", "n": 129}, "n"),
    "too_many_prompts": ({"model": MODEL, "prompt": ["hi"] * 257, "max_tokens": 1}, "prompt"),
    "too_many_choices": ({"model": MODEL, "prompt": "hi", "choices": [f"c{i}" for i in range(257)]}, "choices"),
    "too_many_stop_strings": ({"model": MODEL, "prompt": "hi", "stop": [f"s{i}" for i in range(65)]}, "stop"),
    "too_many_stop_token_ids": ({"model": MODEL, "prompt": "hi", "stop_token_ids": list(range(65))}, "stop_token_ids"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_request_is_400_and_server_keeps_serving(served: Served, case: str) -> None:
    body, param = BAD_BODIES[case]
    assert_openai_error(httpx.post(f"{served.url}/v1/completions", json=body), param)
    ok = httpx.post(f"{served.url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
    assert ok.status_code == 200
    assert_no_leaked_slots(served.wait_idle())


def test_unknown_model_is_404_model_not_found_as_openai_answers(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-nothing", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"


LONE_SURROGATE = b'{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800b"}]}' % MODEL.encode()
NAN_TEMPERATURE = b'{"model": "%s", "prompt": "hi", "temperature": NaN}' % MODEL.encode()


@pytest.mark.parametrize("raw, path", [(LONE_SURROGATE, "/v1/chat/completions"), (NAN_TEMPERATURE, "/v1/completions")])
def test_a_lone_surrogate_or_a_non_finite_number_is_400_and_the_connection_stays_usable(served: Served, raw, path) -> None:
    with httpx.Client(base_url=served.url) as http:
        response = http.post(path, content=raw, headers={"content-type": "application/json"})
        assert_openai_error(response)
        assert "Unicode" in response.json()["error"]["message"] or "finite" in response.json()["error"]["message"]
        assert http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1}).status_code == 200


def test_a_prompt_over_max_prompt_chars_is_400_before_tokenizing(served: Served) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 1_000_001}]}
    response = httpx.post(f"{served.url}/v1/chat/completions", json=body)
    assert_openai_error(response, "messages")
    assert "server.max_prompt_chars" in response.json()["error"]["message"]


def test_a_body_over_max_body_bytes_is_413(served: Served) -> None:
    body = b'{"model": "%s", "prompt": "%s"}' % (MODEL.encode(), b"y" * (5 * 2**20))
    response = httpx.post(f"{served.url}/v1/completions", content=body, headers={"content-type": "application/json"})
    assert_openai_error(response, status=413)
    assert "server.max_body_bytes" in response.json()["error"]["message"]


def test_a_chunked_body_over_max_body_bytes_is_413(served: Served) -> None:
    def chunks():
        yield b'{"model": "%s", "prompt": "' % MODEL.encode()
        for _ in range(80):
            yield b"z" * 65536
        yield b'"}'

    response = httpx.post(f"{served.url}/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_openai_error(response, status=413)


def metric(served: Served, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", httpx.get(f"{served.url}/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def test_routing_misses_are_not_counted_as_rejected_requests(served: Served) -> None:
    before = metric(served, "moeframe_rejected_requests_total")
    assert httpx.get(f"{served.url}/v1/no-such-route").status_code == 404
    assert httpx.get(f"{served.url}/v1/completions").status_code == 405
    assert metric(served, "moeframe_rejected_requests_total") == before
    assert httpx.post(f"{served.url}/v1/completions", json={"model": MODEL}).status_code == 400
    assert metric(served, "moeframe_rejected_requests_total") == before + 1


def test_streaming_request_with_a_bad_constraint_is_400_before_streaming(client: openai.OpenAI, served: Served) -> None:
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="hi", stream=True, extra_body={"regex": "(("})
    assert_no_leaked_slots(served.wait_idle())


def test_an_unexpected_error_is_a_counted_500_and_the_connection_stays_usable(served: Served, monkeypatch) -> None:
    def broken_stats() -> dict:
        raise RuntimeError("stats are broken")

    before = metric(served, 'moeframe_server_errors_total{status="500"}')
    monkeypatch.setattr(served.engine_loop.engine, "stats", broken_stats)
    with httpx.Client(base_url=served.url) as http:
        response = http.get("/stats")
        assert response.status_code == 500
        assert response.json()["error"]["type"] == "server_error" and "stats are broken" in response.json()["error"]["message"]
        monkeypatch.undo()
        assert http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1}).status_code == 200
        assert http.get("/health").status_code == 200
    assert metric(served, 'moeframe_server_errors_total{status="500"}') == before + 1
