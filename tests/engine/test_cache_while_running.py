"""A prefix is reusable as soon as it is computed, while the request that computed it still runs."""

from __future__ import annotations

import pytest

from moeframe import Engine, SamplingParams


@pytest.mark.parametrize("cache", ["cache=radix", "cache=paged cache.block_size=4"])
def test_second_request_reuses_a_running_requests_prefix(cache: str, checkpoint_factory) -> None:
    engine = Engine.from_overrides(
        [f"model.path={checkpoint_factory('tiny-olmoe')}", "device=cpu", "dtype=float32", *cache.split()]
    )
    shared = list(range(10, 42))
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    first = engine.add_request(shared + [7, 8], params)
    engine.step()
    assert not first.is_finished
    second = engine.add_request(shared + [9], params)
    while engine.core.has_work():
        engine.step()
    assert second.cached_tokens == len(shared)
    alone = Engine.from_overrides(
        [f"model.path={checkpoint_factory('tiny-olmoe')}", "device=cpu", "dtype=float32", "cache=none"]
    ).generate([shared + [9]], params)[0]
    assert second.output_ids == alone.token_ids
    assert engine.built.pool.num_free_slots == engine.built.pool.num_slots - engine.built.cache.num_cached_tokens()
