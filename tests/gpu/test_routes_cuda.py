"""Routes on CUDA: captured decode graphs and the overlapped loop return the routes of eager, plain decode.

Requests decode as batches of captured sizes, so the same kernels run
eagerly and replayed and the routes must match exactly; overlap on and off
run the same batches. In float32 the routes are transformers' own choices
(ties within rounding excepted).
"""

from __future__ import annotations

import pytest
import torch
from route_reference import assert_routes_match, hf_routes

from moeframe import Engine, SamplingParams
from moeframe.model.presets import PRESETS, tiny_presets

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

MOE_PRESETS = [p for p in tiny_presets() if PRESETS[p].config_class not in ("LlamaConfig", "Qwen2Config")]
PARAMS = SamplingParams(max_new_tokens=12, ignore_eos=True, return_routed_experts=True)


def engine(path, *extra: str, dtype: str = "bfloat16") -> Engine:
    return Engine.from_overrides([
        f"model.path={path}", "device=cuda", f"dtype={dtype}", "runner.cuda_graph_batch_sizes=[1,2,4,8]",
        "cache.max_tokens=4096", "experts=triton", "runner.routes=true", *extra,
    ])  # fmt: skip


def prompts(vocab: int, count: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in (5, 17, 9, 30, 3, 12, 7, 21)[:count]]


def assert_same(got, want) -> None:
    for a, b in zip(got, want, strict=True):
        assert a.token_ids == b.token_ids
        assert torch.equal(a.routed_experts, b.routed_experts)
        if b.routed_expert_weights is not None:
            assert torch.equal(a.routed_expert_weights, b.routed_expert_weights)


@pytest.mark.parametrize("preset", MOE_PRESETS)
def test_routes_with_cuda_graphs_equal_eager(preset: str, checkpoint_factory) -> None:
    path = checkpoint_factory(preset)
    eager = engine(path, "runner.cuda_graph=false", "runner.routes_weights=true")
    graphs = engine(path, "runner.cuda_graph=true", "runner.routes_weights=true")
    assert graphs.built.runner.graphs is not None
    ids = prompts(eager.spec.vocab_size, 4)
    assert_same(graphs.generate(ids, PARAMS), eager.generate(ids, PARAMS))


@pytest.mark.parametrize("cuda_graph", ["true", "false"])
@pytest.mark.parametrize("count", [1, 3, 8])
def test_routes_with_overlap_equal_the_plain_loop(checkpoint_factory, cuda_graph: str, count: int) -> None:
    """Different lengths leave the ahead steps one by one; both halves of the route buffer take turns."""
    path = checkpoint_factory("tiny-olmoe")
    on = engine(path, f"runner.cuda_graph={cuda_graph}", "runner.overlap=true")
    off = engine(path, f"runner.cuda_graph={cuda_graph}", "runner.overlap=false")
    ids = prompts(on.spec.vocab_size, count)
    params = [SamplingParams(max_new_tokens=6 + 3 * i, ignore_eos=True, return_routed_experts=True) for i in range(count)]
    got = on.generate(ids, params)
    assert on.stats()["ahead_steps"] > 0
    assert_same(got, off.generate(ids, params))


@pytest.mark.parametrize("preset", ["tiny-olmoe", "tiny-deepseek-v3"])
def test_cuda_routes_are_transformers_router_topk(preset: str, checkpoint_factory) -> None:
    path = checkpoint_factory(preset)
    ours = engine(path, dtype="float32")
    ids = prompts(ours.spec.vocab_size, 3)
    for prompt_ids, out in zip(ids, ours.generate(ids, PARAMS)):
        ref_ids, _, scores = hf_routes(path, prompt_ids + out.token_ids[:-1])
        assert_routes_match(out.routed_experts, ref_ids, scores, tol=1e-4)
