"""deterministic=true: a prompt's greedy tokens and logprobs alone equal, bit for bit, those inside mixed batches;
the batch_invariance measurement labels routers invariant or not."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from moeframe import Engine, SamplingParams
from moeframe.attention import ForwardBatch, attend_reference, attend_rows
from moeframe.errors import ConfigError
from moeframe.model.layers.batch_invariant import linear_rows
from moeframe.workloads.batch_invariance import invariance_prompts, measure_batch_invariance, mixed_batches

# chunked prefill (16 tokens a step, 64 a batch) on top of radix-cache hits and changing batches
CHUNKED = ("scheduler.chunk_size=16", "scheduler.max_batch_tokens=64")


@pytest.fixture(scope="module")
def engine_of(checkpoint_factory):
    path = checkpoint_factory("tiny-olmoe")
    return lambda *overrides: Engine.from_overrides([f"model.path={path}", "device=cpu", "dtype=float32", *overrides])


def test_every_prompt_sits_in_three_mixed_batches_with_companions():
    prompts = invariance_prompts(1000, 32, 8, seed=0)
    assert len({tuple(p.ids[:4]) for p in prompts}) == 8  # groups of four share a prefix
    batches = mixed_batches(prompts, 1000, seed=0)
    seen = Counter(i for batch in batches for i, _ in batch if i is not None)
    assert seen == {i: 3 for i in range(32)}
    assert all(any(i is None for i, _ in batch) for batch in batches)
    assert len({len(batch) for batch in batches}) >= 3


def test_linear_rows_gives_each_row_what_it_gives_that_row_alone():
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = torch.randn(37, 64, generator=generator), torch.randn(48, 64, generator=generator), torch.randn(48)
    rows = linear_rows(x, weight, bias)
    torch.testing.assert_close(rows, F.linear(x, weight, bias))
    assert all(torch.equal(rows[i], linear_rows(x[i : i + 1], weight, bias)[0]) for i in range(37))


def test_attention_by_rows_equals_the_reference_and_ignores_the_batch():
    generator = torch.Generator().manual_seed(1)
    k_cache, v_cache = torch.randn(64, 2, 16, generator=generator), torch.randn(64, 2, 16, generator=generator)
    q = torch.randn(9, 4, 16, generator=generator)
    # request 0: 5 new tokens after 3 cached; request 1: one decode token over 12
    batch = ForwardBatch.build([[1] * 5, [2]], [list(range(8)), list(range(20, 32))], "cpu")
    rows = attend_rows(q[:6], k_cache, v_cache, batch, 0.25)
    torch.testing.assert_close(rows, attend_reference(q[:6], k_cache, v_cache, batch, 0.25))
    alone = attend_rows(q[5:6], k_cache, v_cache, ForwardBatch.build([[2]], [list(range(20, 32))], "cpu"), 0.25)
    assert torch.equal(rows[5], alone[0])


@pytest.mark.parametrize(
    ("router", "invariant"),
    [("native", True), ("top2", True), ("hash", True), ("random", True), ("top_p", True),
     ("expert_choice", False), ("balanced", False)],
)
def test_batch_invariance_measurement_labels_the_routers_on_the_deterministic_engine(engine_of, router, invariant):
    """An invariant router's 32 prompts keep their lone tokens and logprobs, bitwise, in all three mixed batches."""
    engine = engine_of("deterministic=true", f"router={router}", *CHUNKED)
    metrics = measure_batch_invariance(engine, num_prompts=32 if invariant else 8, max_new_tokens=4)
    assert metrics["batch_invariant"] is invariant
    assert (metrics["batch_invariance_max_logprob_diff"] > 0) is not invariant
    # the flag the engine keeps CUDA-graph padding away from batch-level routers by agrees with the measurement
    assert engine.built.batch_dependent_routing is not invariant
    if invariant:
        assert metrics["batch_invariance_differing_share"] == 0


def test_deterministic_sampling_draws_per_request(engine_of):
    engine = engine_of("deterministic=true")
    params = SamplingParams(max_new_tokens=6, temperature=1.0, ignore_eos=True)
    prompts = [p.ids for p in invariance_prompts(engine.spec.vocab_size, 6, 6, seed=3)]
    alone = [engine.generate([p], params)[0].token_ids for p in prompts]
    assert [o.token_ids for o in engine.generate(prompts, params)] == alone


@pytest.mark.parametrize(
    ("override", "message"),
    [("experts=grouped_mm", "experts=reference"), ("runner.attention=triton", "attention")],
)
def test_deterministic_refuses_what_it_cannot_keep_invariant(engine_of, override, message):
    with pytest.raises(ConfigError, match=message):
        engine_of("deterministic=true", override)
