"""The engine's req.text while requests run: the whole output's decode after every step, cut at a stop string."""

from __future__ import annotations

import pytest

from moeframe import SamplingParams


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("cache=none", "cache.max_tokens=1024")


def run_steps(engine, prompts, params):
    """Step the engine to completion, recording (request, text, output ids) after every step."""
    reqs = [engine.add_request(p, params) for p in prompts]
    seen = []
    while engine.core.has_work():
        for req in engine.step():
            seen.append((req, req.text, list(req.output_ids)))
    return reqs, seen


def test_text_equals_the_decode_of_all_output_tokens_after_every_step(engine):
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    _, seen = run_steps(engine, [[5, 9, 14, 3], [7, 7, 2], [11, 30, 4, 8, 19]], params)
    assert len(seen) == 3 * 40
    assert all(text == engine.detokenize(ids) for _, text, ids in seen)


def test_a_stop_string_ends_the_request_at_the_same_token_and_cuts_the_text(engine):
    prompt = [5, 9, 14, 3]
    free = engine.generate([prompt], SamplingParams(max_new_tokens=30, ignore_eos=True))[0]
    # A stop string taken from the middle of the free-running output: the first step whose text contains it ends the request.
    stop = free.text[len(free.text) // 2 :][:3]
    assert stop
    want_len = next(k for k in range(1, 31) if stop in engine.detokenize(free.token_ids[:k]))
    out = engine.generate([prompt], SamplingParams(max_new_tokens=30, ignore_eos=True, stop=[stop]))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == free.token_ids[:want_len]
    full = engine.detokenize(out.token_ids)
    assert out.text == full[: full.find(stop)]
