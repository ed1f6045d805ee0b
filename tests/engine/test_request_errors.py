"""Bad input fails one request, never the engine: the others complete as if it had not been sent."""

from __future__ import annotations

import pytest

from moeframe import SamplingParams

POOL = 64
PARAMS = SamplingParams(max_new_tokens=5, ignore_eos=True)


def prompt(start: int, n: int) -> list[int]:
    return [1 + (start + i) % 1000 for i in range(n)]


@pytest.mark.parametrize("cache", ["none", "radix", "paged"])
def test_prompt_larger_than_pool_errors_alone(make_engine, cache):
    block = ["cache.block_size=4"] if cache == "paged" else []
    engine = make_engine(f"cache={cache}", f"cache.max_tokens={POOL}", *block)
    ok_a, too_big, ok_b = prompt(0, 12), prompt(100, POOL + 5), prompt(200, 9)
    outs = engine.generate([ok_a, too_big, ok_b], PARAMS)
    alone = engine.generate([ok_a, ok_b], PARAMS)
    assert outs[1].finish_reason == "error"
    assert "KV pool" in outs[1].error and str(POOL) in outs[1].error
    assert [o.finish_reason for o in (outs[0], outs[2])] == ["length", "length"]
    assert [outs[0].token_ids, outs[2].token_ids] == [o.token_ids for o in alone]


@pytest.mark.parametrize("cache", ["none", "radix"])
def test_request_outgrowing_pool_alone_stops_with_message(make_engine, cache):
    engine = make_engine(f"cache={cache}", f"cache.max_tokens={POOL}")
    long_run = SamplingParams(max_new_tokens=POOL, ignore_eos=True)
    outs = engine.generate([prompt(0, 40), prompt(300, 6)], [long_run, PARAMS])
    assert outs[0].finish_reason == "length" and "KV pool" in outs[0].error
    assert len(outs[0].token_ids) == POOL - 40 + 1
    assert outs[1].finish_reason == "length" and outs[1].error is None and len(outs[1].token_ids) == 5
    assert engine.built.pool.num_free_slots == POOL - engine.built.cache.num_cached_tokens()
