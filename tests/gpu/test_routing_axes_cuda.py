"""Routing axes and deterministic=true on CUDA: top-p, skipping and pruning decode in CUDA graphs with the fused
kernels, and the deterministic engine keeps every prompt's tokens and logprobs bitwise in mixed batches."""

from __future__ import annotations

import warnings

import pytest
import torch

from moeframe import Engine, SamplingParams
from moeframe.workloads.batch_invariance import invariance_prompts, measure_batch_invariance

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def engine(path, *extra: str) -> Engine:
    return Engine.from_overrides(
        [f"model.path={path}", "device=cuda", "runner.cuda_graph_batch_sizes=[1,2,4,8]", "cache.max_tokens=8192", *extra]
    )


@pytest.mark.parametrize(
    "axis",
    [("router=top_p", "router.p=0.6", "router.max_k=8"), ("routing.skip_beta=0.4",),
     ("routing.prune_experts=8", "routing.calibration_tokens=256")],
    ids=["top_p", "skip", "prune"],
)
def test_routing_axes_decode_in_cuda_graphs_with_the_fused_kernels_as_eagerly(axis, checkpoint_factory):
    path = checkpoint_factory("tiny-olmoe")
    eager = engine(path, "experts=triton", "dtype=float32", "runner.cuda_graph=false", *axis)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphs = engine(path, "experts=triton", "dtype=float32", "runner.cuda_graph=true", *axis)
    assert graphs.built.runner.graphs is not None, [str(w.message) for w in caught]
    prompts = [p.ids for p in invariance_prompts(eager.spec.vocab_size, 4, 8, seed=1)]  # a batch of 4: captured
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    assert [o.token_ids for o in graphs.generate(prompts, params)] == [o.token_ids for o in eager.generate(prompts, params)]
    assert 0 < graphs.stats()["expert_load"]["total"]["experts_per_token"] <= 8


@pytest.mark.parametrize("router", ["native", "top2", "top_p", "hash", "random"])
def test_deterministic_engine_on_cuda_keeps_32_prompts_bitwise_in_mixed_batches(router, checkpoint_factory):
    deterministic = engine(
        checkpoint_factory("tiny-olmoe"), "deterministic=true", f"router={router}",
        "scheduler.chunk_size=16", "scheduler.max_batch_tokens=64",
    )  # fmt: skip
    metrics = measure_batch_invariance(deterministic, num_prompts=32, max_new_tokens=6)
    assert metrics["batch_invariant"], metrics
