"""Expert kernels at the OLMoE-1B-7B shape (E=64, k=8, H=2048, I=1024, bf16)."""

from __future__ import annotations

import pytest
import torch

from moeframe.experts import EXPERTS
from moeframe.experts.triton_moe import fused_moe
from moeframe.routers.plan import RoutingPlan

E, K, H, I = 64, 8, 2048, 1024


@pytest.fixture(scope="module")
def weights() -> tuple[torch.Tensor, torch.Tensor]:
    w13 = (torch.randn(E, 2 * I, H, device="cuda") / H**0.5).bfloat16()
    w2 = (torch.randn(E, H, I, device="cuda") / I**0.5).bfloat16()
    return w13, w2


def routed(num_tokens: int) -> tuple[torch.Tensor, RoutingPlan]:
    hidden = torch.randn(num_tokens, H, device="cuda").bfloat16()
    topk_ids = torch.rand(num_tokens, E, device="cuda").topk(K, dim=-1).indices
    return hidden, RoutingPlan(topk_ids, torch.softmax(torch.rand(num_tokens, K, device="cuda"), -1))


@pytest.mark.parametrize("num_tokens", [1, 8, 32, 4096])
def test_bench_triton_fused_moe(benchmark, replay_graph, weights, num_tokens):
    w13, w2 = weights
    hidden, plan = routed(num_tokens)
    run = replay_graph(lambda: fused_moe(hidden, w13, w2, plan.topk_ids, plan.topk_weights))
    benchmark(run)
    weight_bytes = torch.unique(plan.topk_ids).numel() * (w13[0].numel() + w2[0].numel()) * 2
    benchmark.extra_info["weight_gb_per_s"] = weight_bytes / benchmark.stats["median"] / 1e9
    benchmark.extra_info["tflops"] = 2 * num_tokens * K * 3 * H * I / benchmark.stats["median"] / 1e12


@pytest.mark.parametrize("num_tokens", [1, 32, 4096])
def test_bench_grouped_mm(benchmark, weights, num_tokens):
    w13, w2 = weights
    hidden, plan = routed(num_tokens)
    kernel = EXPERTS.build({"name": "grouped_mm"})

    def run() -> None:
        kernel.forward(hidden, w13, w2, plan)
        torch.cuda.synchronize()

    benchmark(run)
