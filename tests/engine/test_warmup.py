"""Warm-up at build (engine/warmup.py): every request shape runs once, and nothing of it stays behind."""

from __future__ import annotations

import pytest
import torch

from moeframe import Engine, SamplingParams
from moeframe.engine.warmup import warmup_batches


def engine(path, *extra: str) -> Engine:
    return Engine.from_overrides([f"model.path={path}", "device=cpu", "dtype=float32", "cache=radix", *extra])


def test_the_batches_cover_each_power_of_two_prefill_a_cached_prefix_and_each_batch_size() -> None:
    batches = list(warmup_batches([1, 3, 8], max_batch_tokens=64, vocab_size=100, max_context=4096))
    prefills, pair, sized = batches[:7], batches[7:9], batches[9:]
    assert [len(ids) for ((ids, params),) in prefills] == [1, 2, 4, 8, 16, 32, 64]
    assert all(params.max_new_tokens == 1 for ((_, params),) in prefills)
    (first, _), (second, _) = pair[0][0], pair[1][0]
    assert first[:48] == second[:48] and first != second
    assert [len(b) for b in sized] == [1, 3, 8]
    kinds = {(p.temperature > 0, p.logprobs is not None) for _, p in sized[-1]}
    assert kinds == {(False, False), (True, False), (False, True)}
    assert all(0 < t < 100 for b in batches for ids, _ in b for t in ids)


def test_prompts_stay_inside_the_context() -> None:
    batches = list(warmup_batches([1], max_batch_tokens=2048, vocab_size=50, max_context=100))
    assert max(len(ids) for b in batches for ids, _ in b) < 100


def test_after_warm_up_the_engine_reports_and_generates_as_a_fresh_one(checkpoint_factory) -> None:
    path = checkpoint_factory("tiny-olmoe")
    fresh, warmed = engine(path), engine(path, "runner.cuda_graph_batch_sizes=[1,2,4]")
    assert warmed.warm_up() > 0
    stats = warmed.stats()
    assert stats["num_cached_tokens"] == 0 and stats["num_free_slots"] == stats["num_slots"]
    assert stats["forward_steps"] == stats["generated_tokens"] == stats["cache"]["matched_tokens"] == 0
    assert stats["expert_load"]["counts"] == fresh.stats()["expert_load"]["counts"]
    assert stats["expert_load"]["counted_apart"]["warmup"]["tokens"] > 0  # counted apart, not dropped
    assert not warmed.core.requests
    prompts = [list(range(3, 19)), list(range(40, 47))]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    assert [o.token_ids for o in warmed.generate(prompts, params)] == [o.token_ids for o in fresh.generate(prompts, params)]
    assert warmed.stats()["expert_load"]["counts"] == fresh.stats()["expert_load"]["counts"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_engine_warms_up_at_build(checkpoint_factory) -> None:
    made = Engine.from_overrides([
        f"model.path={checkpoint_factory('tiny-olmoe')}", "device=cuda", "dtype=bfloat16", "experts=triton",
        "cache.max_tokens=4096", "runner.cuda_graph_batch_sizes=[1,2,4]",
    ])  # fmt: skip
    assert made.stats()["warmup_s"] > 0 and made.stats()["forward_steps"] == 0
