"""The OpenAI endpoints, through the official client, against the engine's own greedy answers."""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest
import torch
from openai_server import MODEL, Served

from moeframe.api import SamplingParams
from moeframe.server.chat_format import ChatFormat

PROMPT = "The quick brown fox"


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_health_reports_ok(served: Served) -> None:
    response = httpx.get(f"{served.url}/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_completion_equals_engine_greedy_output(client: openai.OpenAI, served: Served) -> None:
    ref = served.reference(PROMPT, SamplingParams(max_new_tokens=8))
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    assert out.choices[0].text == ref.text
    assert out.choices[0].finish_reason == ref.finish_reason
    assert out.usage.completion_tokens == len(ref.token_ids)
    assert out.usage.prompt_tokens == ref.prompt_tokens


def test_completion_accepts_token_id_prompts(client: openai.OpenAI, served: Served) -> None:
    ids = served.engine_loop.call(lambda e: e.encode(PROMPT)).result()
    by_text = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text


def test_chat_renders_template_and_stops_at_end_of_turn(client: openai.OpenAI, served: Served) -> None:
    tokenizer = served.engine_loop.engine.tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    prompt = ChatFormat(tokenizer.chat_template).render(messages)
    assert prompt == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ref = served.reference(prompt, SamplingParams(max_new_tokens=8, stop_token_ids=[im_end]))
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == ref.text
    assert out.usage.completion_tokens == len(ref.token_ids)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_streamed_deltas_concatenate_to_the_full_response(client: openai.OpenAI, endpoint: str) -> None:
    if endpoint == "completions":
        whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0)
        chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0, stream=True))
        text = "".join(c.choices[0].text for c in chunks)
        expected = whole.choices[0].text
    else:
        messages = [{"role": "user", "content": PROMPT}]
        whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0)
        chunks = list(
            client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0, stream=True)
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        expected = whole.choices[0].message.content
        assert chunks[0].choices[0].delta.role == "assistant"
    assert len(chunks) > 2
    assert text == expected
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stream_usage_counts_the_streamed_tokens(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=7, temperature=0, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7


def test_n_choices_are_the_seeded_single_requests(client: openai.OpenAI) -> None:
    many = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=1.0, n=3, seed=11)
    assert [c.index for c in many.choices] == [0, 1, 2]
    for i, choice in enumerate(many.choices):
        single = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=1.0, seed=11 + i)
        assert choice.text == single.choices[0].text
    assert many.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    a = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    b = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    assert a.choices[0].text == b.choices[0].text


def test_completion_logprobs_equal_teacher_forced_log_softmax(client: openai.OpenAI, served: Served) -> None:
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    ref = served.reference(PROMPT, SamplingParams(max_new_tokens=5))

    def forced(engine: object) -> torch.Tensor:
        ids = engine.encode(PROMPT)
        logits = engine.score(ids + ref.token_ids)
        return torch.log_softmax(logits[len(ids) - 1 : -1], dim=-1)

    logp = served.engine_loop.call(forced).result()
    expected = logp.gather(-1, torch.tensor(ref.token_ids)[:, None])[:, 0]
    assert lp.token_logprobs == pytest.approx(expected.tolist(), abs=1e-3)
    for row, top in zip(logp, lp.top_logprobs):
        assert sorted(top.values(), reverse=True) == pytest.approx(row.topk(3).values.tolist(), abs=1e-3)
    assert "".join(lp.tokens) == out.choices[0].text


def test_chat_logprobs_have_top_alternatives(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
    )
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy takes the top token


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_cuts_the_text_before_it(client: openai.OpenAI, stream: bool) -> None:
    free = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    text = free.choices[0].text
    stop = text[4:6]
    expected = text[: text.find(stop)]
    out = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop], stream=stream, extra_body={"ignore_eos": True}
    )
    if stream:
        chunks = list(out)
        got, reason = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
    else:
        got, reason = out.choices[0].text, out.choices[0].finish_reason
    assert got == expected and reason == "stop"


def test_max_tokens_bounds_the_completion(client: openai.OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 3 and out.choices[0].finish_reason == "length"


def test_json_schema_response_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
        "required": ["answer", "sure"],
        "additionalProperties": False,
    }
    out = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Answer in JSON."}],
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    jsonschema.validate(json.loads(out.choices[0].message.content), schema)


def test_regex_extra_field_constrains_the_text(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0, extra_body={"regex": "[0-9]{3}-[a-z]{2}"}
    )
    assert re.fullmatch("[0-9]{3}-[a-z]{2}", out.choices[0].text)


def test_choices_extra_field_picks_one_choice(client: openai.OpenAI) -> None:
    choices = ["alpha", "beta gamma", "delta"]
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0, extra_body={"choices": choices})
    assert out.choices[0].text in choices


def test_stats_reports_engine_state(served: Served) -> None:
    stats = served.wait_idle()
    assert {"num_slots", "num_free_slots", "num_cached_tokens", "cache", "prefill_tokens", "expert_load"} <= set(stats)
    assert stats["cache"]["matched_tokens"] <= stats["cache"]["queried_tokens"]


def test_json_object_response_opens_a_json_object(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Reply in JSON."}],
        max_tokens=12,
        temperature=0,
        response_format={"type": "json_object"},
    )
    text = out.choices[0].message.content
    assert text.startswith("{")  # a random-weight model rarely closes it within 12 tokens
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_prompt_list_gives_n_choices_per_prompt_in_order(client: openai.OpenAI) -> None:
    prompts = ["First prompt", "Second, longer prompt"]
    out = client.completions.create(model=MODEL, prompt=prompts, max_tokens=4, temperature=0, n=2)
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=4, temperature=0).choices[0].text for p in prompts]
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert [c.text for c in out.choices] == [alone[0], alone[0], alone[1], alone[1]]
