"""Pipeline stage layout and micro-batches, in one process: parameter counts, the balanced split, the request cuts."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from moeframe import Engine
from moeframe.attention.batch import ForwardBatch
from moeframe.parallel.stages import balanced_split, layer_parameters, micro_batch_bounds, model_parameters, split_bounds

# full q/k norm (OLMoE), per-head norm (Qwen3), shared experts with a gate and qkv bias (Qwen2-MoE),
# MLA with a dense first layer and shared experts (DeepSeek-V3), dense models (Llama; Qwen2 with tied embeddings)
PRESETS = ["tiny-olmoe", "tiny-qwen3-moe", "tiny-qwen2-moe", "tiny-deepseek-v3", "tiny-llama", "tiny-qwen2"]


@pytest.mark.parametrize("preset", PRESETS)
def test_layer_parameters_count_the_built_layers(preset: str) -> None:
    eng = Engine.from_overrides([f"model={preset}", "model.random_weights=true", "device=cpu", "cache=none"])
    for i, layer in enumerate(eng.built.model.layers):
        assert layer_parameters(eng.spec, i) == sum(p.numel() for p in layer.parameters())
    assert model_parameters(eng.spec) == sum(p.numel() for p in eng.built.model.parameters())


def brute_force_max(weights: list[int], stages: int, first: int, last: int) -> int:
    best = None
    for cuts in itertools.combinations(range(1, len(weights)), stages - 1):
        bounds = list(zip((0, *cuts), (*cuts, len(weights))))
        loads = [sum(weights[lo:hi]) for lo, hi in bounds]
        loads[0] += first
        loads[-1] += last
        best = max(loads) if best is None else min(best, max(loads))
    return best


def test_balanced_split_reaches_the_brute_force_optimum() -> None:
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 8)
        weights = [rng.randint(1, 50) for _ in range(n)]
        stages = rng.randint(1, n)
        first, last = rng.randint(0, 60), rng.randint(0, 60)
        sizes = balanced_split(weights, stages, first, last)
        assert len(sizes) == stages and min(sizes) >= 1 and sum(sizes) == n
        loads = [sum(weights[lo:hi]) for lo, hi in split_bounds(sizes)]
        loads[0] += first
        loads[-1] += last
        assert max(loads) == brute_force_max(weights, stages, first, last)


def test_balanced_split_gives_the_embedding_stage_fewer_layers() -> None:
    # 6 equal layers; the first stage also holds an embedding worth two of them
    assert balanced_split([10] * 6, 2, first_extra=20) == [2, 4]
    assert balanced_split([10] * 6, 2, last_extra=20) == [4, 2]


def test_micro_batches_split_decode_requests_evenly() -> None:
    assert micro_batch_bounds([1] * 8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert micro_batch_bounds([1] * 5, 2) == [(0, 3), (3, 5)]


def test_micro_batches_follow_tokens_and_never_come_out_empty() -> None:
    assert micro_batch_bounds([10, 1, 1, 1, 1], 2) == [(0, 1), (1, 5)]
    assert micro_batch_bounds([1, 1, 1, 1, 10], 2) == [(0, 4), (4, 5)]
    assert micro_batch_bounds([100, 1, 1], 3) == [(0, 1), (1, 2), (2, 3)]
    assert micro_batch_bounds([7, 3], 4) == [(0, 1), (1, 2)]
    rng = random.Random(1)
    for _ in range(300):
        q_lens = [rng.randint(1, 20) for _ in range(rng.randint(1, 10))]
        want = rng.randint(1, 6)
        bounds = micro_batch_bounds(q_lens, want)
        assert len(bounds) == min(want, len(q_lens))
        assert bounds[0][0] == 0 and bounds[-1][1] == len(q_lens)
        assert all(lo < hi for lo, hi in bounds) and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


@pytest.mark.parametrize("all_logits", [False, True])
def test_a_batch_of_some_requests_equals_the_batch_built_from_them(all_logits: bool) -> None:
    tokens = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14]]
    contexts = [[0, 1, 2], [3, 4, 5, 6], [7, 8], [9, 10, 11, 12, 13, 14]]
    whole = ForwardBatch.build(tokens, contexts, "cpu", all_logits=all_logits)
    for lo, hi in [(0, 1), (1, 3), (2, 4), (0, 4)]:
        part, built = whole.select_requests(lo, hi), ForwardBatch.build(tokens[lo:hi], contexts[lo:hi], "cpu", all_logits)
        for field in ("input_ids", "positions", "out_slots", "q_indptr", "kv_indptr", "kv_indices", "logits_indices"):
            assert torch.equal(getattr(part, field), getattr(built, field)), field
        assert (part.q_lens, part.kv_lens) == (built.q_lens, built.kv_lens)


def test_a_micro_batch_follows_its_own_rows_of_replayed_routes() -> None:
    from moeframe.model.layers.context import ForwardContext
    from moeframe.model.layers.routes import StepRoutes
    from moeframe.parallel.pipeline import micro_context

    batch = ForwardBatch.build([[5, 6, 7], [8], [9, 10]], [[0, 1, 2], [3, 4], [5, 6]], "cpu")
    replay = torch.arange(6 * 2 * 3).view(6, 2, 3)  # [T, MoE layers, k]
    ctx = ForwardContext(batch, [], [], attend=None, routes=StepRoutes({0: 0, 1: 1}, None, replay))
    part = micro_context(ctx, 1, 3)
    assert torch.equal(part.routes.replay, replay[3:6]) and part.batch.q_lens == [1, 2]
