"""Random inputs for kernel tests: routing plans with optional dropped assignments, expert weights, KV batches."""

from __future__ import annotations

import torch

from moeframe.attention.batch import ForwardBatch
from moeframe.routers.plan import RoutingPlan


def random_plan(num_tokens: int, num_experts: int, top_k: int, drop_fraction: float, gen: torch.Generator) -> RoutingPlan:
    scores = torch.rand(num_tokens, num_experts, generator=gen)
    topk_ids = scores.topk(top_k, dim=-1).indices
    weights = torch.rand(num_tokens, top_k, generator=gen) + 0.1
    dropped = torch.rand(num_tokens, top_k, generator=gen) < drop_fraction
    topk_ids = topk_ids.masked_fill(dropped, -1)
    return RoutingPlan(topk_ids=topk_ids, topk_weights=weights.masked_fill(dropped, 0.0))


def random_experts(num_experts: int, hidden: int, inter: int, dtype: torch.dtype, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w13 = torch.randn(num_experts, 2 * inter, hidden, generator=gen) / hidden**0.5
    w2 = torch.randn(num_experts, hidden, inter, generator=gen) / inter**0.5
    return w13.to(dtype), w2.to(dtype)


def random_kv_batch(
    q_lens: list[int], kv_lens: list[int], num_slots: int, device: torch.device, gen: torch.Generator
) -> ForwardBatch:
    """Requests whose contexts sit in random, non-contiguous slots of a pool of ``num_slots``."""
    slots = torch.randperm(num_slots, generator=gen).tolist()
    contexts, used = [], 0
    for kv_len in kv_lens:
        contexts.append(slots[used : used + kv_len])
        used += kv_len
    return ForwardBatch.build([[0] * q for q in q_lens], contexts, device)


def tolerance(dtype: torch.dtype, device: torch.device) -> dict:
    """assert_close tolerances: float32 is exact under the interpreter but TF32 in tl.dot on the GPU."""
    if dtype == torch.float32 and device.type != "cuda":
        return {"atol": 1e-4, "rtol": 1e-4}
    return {"atol": 3e-2, "rtol": 3e-2}
