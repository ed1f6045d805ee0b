"""@function programs on both backends: roles, gen, constrained gen, select, run_batch, errors."""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest
import torch

from moeframe.errors import RequestError
from moeframe.frontend import Backend, EngineBackend, ServerBackend, assistant, function, gen, select, system, user

COLOURS = ["red", "green", "light blue"]
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
    "additionalProperties": False,
}


@function
def chat_program(s, question: str) -> None:
    s += system("You are terse.")
    s += user(question)
    s += assistant(gen("answer", max_tokens=6))
    s += user("Pick a colour.")
    s += assistant(select("colour", COLOURS))


@function
def structured_program(s) -> None:
    s += "Code: " + gen("code", max_tokens=8, regex="[A-Z]{2}-[0-9]{3}") + "\n"
    s += "Verdict: " + gen("verdict", max_tokens=30, json_schema=SCHEMA) + "\n"
    s += "Mood: " + select("mood", ["calm", "angry"], method="constraint")


def test_role_turns_render_through_the_chat_template(backend: Backend) -> None:
    s = chat_program.run("What is two plus two?", backend=backend)
    messages = s.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == s["answer"] and messages[4]["content"] == s["colour"]
    assert s.text() == backend.chat.render(messages, add_generation_prompt=False)


def test_assistant_gen_equals_the_servers_chat_completion(server_backend: ServerBackend) -> None:
    @function
    def ask(s, question: str) -> None:
        s += user(question)
        s += assistant(gen("answer", max_tokens=8))

    s = ask.run("Name a fruit.", backend=server_backend)
    client = openai.OpenAI(base_url=f"{server_backend.client.base_url}/v1", api_key="unused", max_retries=0)
    out = client.chat.completions.create(
        model=server_backend.model, messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=8, temperature=0
    )
    assert s["answer"] == out.choices[0].message.content


def test_constrained_gens_obey_their_constraints(backend: Backend) -> None:
    s = structured_program.run(backend=backend)
    assert re.fullmatch("[A-Z]{2}-[0-9]{3}", s["code"])
    jsonschema.validate(json.loads(s["verdict"]), SCHEMA)
    assert s["mood"] in ("calm", "angry")


def test_both_backends_run_a_program_to_the_same_result(
    engine_backend: EngineBackend, server_backend: ServerBackend
) -> None:
    local = chat_program.run("Why is the sky blue?", backend=engine_backend)
    remote = chat_program.run("Why is the sky blue?", backend=server_backend)
    assert local.text() == remote.text()
    assert structured_program.run(backend=engine_backend).text() == structured_program.run(backend=server_backend).text()


def test_select_picks_the_choice_of_highest_mean_token_logprob(engine_backend: EngineBackend) -> None:
    prompt = "My favourite colour is "

    @function
    def pick(s) -> None:
        s += prompt + select("colour", COLOURS)

    chosen = pick.run(backend=engine_backend)["colour"]

    def brute_force(engine: object) -> list[float]:
        """One forward per scored token, over the growing prefix (no teacher-forced batch)."""
        prompt_ids = engine.encode(prompt)
        means = []
        for choice in COLOURS:
            full = engine.encode(prompt + choice)
            start = next(i for i, (a, b) in enumerate(zip(prompt_ids + [-1], full)) if a != b)
            lps = [torch.log_softmax(engine.score(full[:j])[-1], -1)[full[j]].item() for j in range(start, len(full))]
            means.append(sum(lps) / len(lps))
        return means

    means = engine_backend.loop.call(brute_force).result()
    assert chosen == COLOURS[max(range(len(COLOURS)), key=means.__getitem__)]


def test_run_batch_returns_each_programs_own_result_in_order(engine_backend: EngineBackend) -> None:
    @function
    def complete(s, topic: str) -> None:
        s += f"A note about {topic}: " + gen("note", max_tokens=5)

    topics = ["rivers", "mountains", "deserts", "forests", "oceans", "glaciers"]
    alone = [complete.run(t, backend=engine_backend)["note"] for t in topics]
    before = engine_backend.stats()
    batch = complete.run_batch([{"topic": t} for t in topics], backend=engine_backend)
    after = engine_backend.stats()
    assert [s["note"] for s in batch] == alone
    # batched: fewer forward steps than tokens generated (one at a time needs one step per token)
    assert after["forward_steps"] - before["forward_steps"] < after["generated_tokens"] - before["generated_tokens"]


def test_reading_an_unknown_variable_raises_keyerror(engine_backend: EngineBackend) -> None:
    s = chat_program.run("Hi", backend=engine_backend)
    with pytest.raises(KeyError, match="no variable 'nope'"):
        s["nope"]


def test_an_invalid_constraint_raises_when_the_program_runs(backend: Backend) -> None:
    @function
    def bad(s) -> None:
        s += "x" + gen("y", regex="([a-z")

    with pytest.raises(RequestError, match="regex"):
        bad.run(backend=backend)
