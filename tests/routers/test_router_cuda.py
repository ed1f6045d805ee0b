"""Routers on CUDA: same plans as on the CPU, and the sync-free ones replay inside a CUDA graph."""

from __future__ import annotations

import pytest
import torch

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS, RouteContext
from moeframe.telemetry.expert_load import ExpertLoadRecorder

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SOFTMAX = MoESpec(num_experts=16, top_k=4, intermediate_size=8, norm_topk_prob=True)
DEEPSEEK = MoESpec(num_experts=16, top_k=4, intermediate_size=8, scoring="sigmoid", norm_topk_prob=True,
                   n_group=4, topk_group=2, routed_scaling_factor=2.5, has_correction_bias=True)
DETERMINISTIC = {
    "native": {"name": "native"},
    "top_k_capacity": {"name": "top_k", "k": 2, "capacity_factor": 1.0},
    "expert_choice": {"name": "expert_choice", "capacity_factor": 1.0},
    "balanced_greedy": {"name": "balanced"},
    "balanced_sinkhorn": {"name": "balanced", "method": "sinkhorn"},
    "aux_free": {"name": "aux_free"},
    "hash": {"name": "hash"},
    "random": {"name": "random"},
    "top_p": {"name": "top_p", "p": 0.6, "max_k": 4},
}
# no host sync and no generator state: these can sit inside a captured decode step
CAPTURABLE = ["native", "top_k_capacity", "expert_choice", "balanced_sinkhorn", "hash", "random", "top_p"]


def inputs(device: str, num_tokens: int = 256, seed: int = 0) -> tuple[torch.Tensor, RouteContext]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_tokens, 16, generator=generator)
    token_ids = torch.randint(0, 32000, (num_tokens,), generator=generator)
    bias = torch.randn(16, generator=generator) * 0.1
    return logits.to(device), RouteContext(token_ids.to(device), bias.to(device), torch.arange(num_tokens, device=device))


@pytest.mark.parametrize("moe", [SOFTMAX, DEEPSEEK], ids=["softmax", "deepseek"])
@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_cuda_plan_equals_cpu_plan(name, moe):
    plans = []
    for device in ("cpu", "cuda"):
        logits, ctx = inputs(device)
        plans.append(ROUTERS.build(DETERMINISTIC[name], moe=moe, layer_idx=0).route(logits, ctx))
    cpu, cuda = plans
    assert torch.equal(cpu.topk_ids, cuda.topk_ids.cpu())
    torch.testing.assert_close(cpu.topk_weights, cuda.topk_weights.cpu())


def test_random_router_runs_on_cuda():
    ctx = RouteContext(token_ids=torch.arange(64, device="cuda"), positions=torch.arange(64, device="cuda"))
    plan = ROUTERS.build({"name": "random"}, moe=SOFTMAX, layer_idx=0).route(torch.zeros(64, 16, device="cuda"), ctx)
    assert plan.topk_ids.is_cuda and all(len(set(row)) == 4 for row in plan.topk_ids.tolist())


@pytest.mark.parametrize("name", CAPTURABLE)
def test_router_replays_in_a_cuda_graph(name):
    router = ROUTERS.build(DETERMINISTIC[name], moe=DEEPSEEK, layer_idx=0)
    static_logits, ctx = inputs("cuda", num_tokens=32)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        router.route(static_logits, ctx)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_plan = router.route(static_logits, ctx)
    new_logits, _ = inputs("cuda", num_tokens=32, seed=1)
    static_logits.copy_(new_logits)
    graph.replay()
    expected = ROUTERS.build(DETERMINISTIC[name], moe=DEEPSEEK, layer_idx=0).route(new_logits, ctx)
    assert torch.equal(static_plan.topk_ids, expected.topk_ids)
    torch.testing.assert_close(static_plan.topk_weights, expected.topk_weights)


def test_expert_load_recorder_counts_inside_a_cuda_graph():
    recorder = ExpertLoadRecorder(num_layers=1, num_experts=16)
    plan = ROUTERS.build({"name": "native"}, moe=SOFTMAX, layer_idx=0).route(torch.zeros(2, 16, device="cuda"), RouteContext())
    plan.topk_ids.copy_(torch.tensor([[0, 1, 2, 3], [1, 2, 3, -1]], device="cuda"))
    recorder.record(0, plan)  # first record allocates, outside the graph
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        recorder.record(0, plan)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    assert recorder.load_counts()[0, :4].tolist() == [4, 8, 8, 8]
    assert recorder.dropped_counts().tolist() == [4]
