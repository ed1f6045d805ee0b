"""The checkpoint's own routing, op for op as transformers 5.24 computes it.

Softmax families (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE; MixtralTopKRouter and
its siblings): softmax over all experts in float32, top-k (sorted), divided by
the top-k sum when norm_topk_prob (Mixtral always). DeepSeek-V3
(DeepseekV3TopkRouter): sigmoid affinities; choice scores add the checkpoint's
e_score_correction_bias; each of n_group groups is scored by the sum of its two
best choice scores; only the best topk_group groups stay eligible; top-k among
them; the weights are the unbiased affinities, normalised (with transformers'
1e-20 guard) when norm_topk_prob, times routed_scaling_factor. DeepSeek-V2
(DeepseekV2TopkRouter): softmax affinities, top-k of all experts ("greedy") or
of the topk_group groups with the best single expert ("group_limited_greedy"),
weights times routed_scaling_factor and never renormalised (transformers' V2
router reads no norm_topk_prob; V2's configs set it false).

The selection functions take the choice bias as an argument so the
auxiliary-loss-free router can reuse them with its own online bias. On CUDA
softmax_topk is one Triton launch (fused_topk.py), and at decode sizes the
softmax families route from the hidden states in the gate GEMV's own launch
(gate_topk.py), which also runs the residual add and RMSNorm before the block
(``route_residual``); the torch code here is the CPU path and the reference their
tests compare against.
"""

from __future__ import annotations

import torch

from moeframe.model.layers import batch_invariant
from moeframe.model.spec import MoESpec
from moeframe.registry import NoParams
from moeframe.routers import ROUTERS
from moeframe.routers.base import RouteContext
from moeframe.routers.fused_topk import fused_softmax_topk
from moeframe.routers.gate_topk import FusedSoftmaxTopKRouter, GateTopK
from moeframe.routers.plan import RoutingPlan


def check_group_limits(moe: MoESpec, k: int) -> None:
    """Group-limited routing must be able to pick k experts from topk_group of n_group groups."""
    if moe.num_experts % moe.n_group:
        raise ValueError(f"n_group={moe.n_group} does not divide the model's {moe.num_experts} experts")
    group_size = moe.num_experts // moe.n_group
    if group_size < 2 and moe.group_score == "top2_sum":
        raise ValueError(f"groups of {group_size} expert: a group is scored by its two best experts")
    if not 1 <= moe.topk_group <= moe.n_group:
        raise ValueError(f"topk_group={moe.topk_group} must lie in 1..n_group={moe.n_group}")
    if k > moe.topk_group * group_size:
        raise ValueError(f"k={k} is more than the {moe.topk_group * group_size} experts of topk_group={moe.topk_group} groups")


def softmax_topk(
    gate_logits: torch.Tensor, k: int, renormalize: bool, scale: float, bias: torch.Tensor | None = None
) -> RoutingPlan:
    if gate_logits.is_cuda and not batch_invariant.batch_invariant():
        return fused_softmax_topk(gate_logits, k, renormalize, scale, bias)
    probs = torch.softmax(gate_logits.float(), dim=-1)
    choice = probs if bias is None else probs + bias
    ids = torch.topk(choice, k, dim=-1).indices
    weights = probs.gather(1, ids)
    if renormalize:
        weights /= weights.sum(dim=-1, keepdim=True)
    return RoutingPlan(topk_ids=ids, topk_weights=weights * scale)


def group_limited_topk(gate_logits: torch.Tensor, moe: MoESpec, k: int, bias: torch.Tensor | None) -> RoutingPlan:
    scores = gate_logits.float().sigmoid() if moe.scoring == "sigmoid" else torch.softmax(gate_logits.float(), dim=-1)
    choice = scores if bias is None else scores + bias
    num_tokens, num_experts = choice.shape
    grouped = choice.view(num_tokens, moe.n_group, num_experts // moe.n_group)
    if moe.group_score == "max":
        group_scores = grouped.amax(dim=-1)
    else:
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
    group_idx = torch.topk(group_scores, k=moe.topk_group, dim=-1, sorted=False).indices
    group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1.0).bool()
    eligible = group_mask.unsqueeze(-1).expand_as(grouped).reshape(num_tokens, num_experts)
    choice = choice.masked_fill(~eligible, float("-inf"))
    # transformers' unsorted top-k fixes the set and the order its normalising sum runs in;
    # the columns are sorted by choice score only after the weights are final
    top_choice, ids = torch.topk(choice, k=k, dim=-1, sorted=False)
    weights = scores.gather(1, ids)
    if moe.norm_topk_prob:
        weights /= weights.sum(dim=-1, keepdim=True) + 1e-20
    weights = weights * moe.routed_scaling_factor
    order = torch.sort(top_choice, dim=-1, descending=True, stable=True).indices
    return RoutingPlan(topk_ids=ids.gather(1, order), topk_weights=weights.gather(1, order))


def grouped(moe: MoESpec) -> bool:
    """Whether the checkpoint routes by group-limited top-k (DeepSeek-V3, and V2's group_limited_greedy)."""
    return moe.scoring == "sigmoid" or moe.n_group > 1


@ROUTERS.register("native")
class NativeRouter(FusedSoftmaxTopKRouter):
    def __init__(self, params: NoParams, *, moe: MoESpec, layer_idx: int, **_: object) -> None:
        if grouped(moe):
            check_group_limits(moe, moe.top_k)
        self.moe = moe
        self.gate_topk = GateTopK()

    def softmax_topk_args(self) -> tuple[int, bool, float] | None:
        moe = self.moe
        return None if grouped(moe) else (moe.top_k, moe.norm_topk_prob, moe.routed_scaling_factor)

    def route(self, gate_logits: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        moe = self.moe
        if not grouped(moe):
            return softmax_topk(gate_logits, moe.top_k, moe.norm_topk_prob, moe.routed_scaling_factor)
        if moe.has_correction_bias and ctx.correction_bias is None:
            raise ValueError("native routing of this checkpoint needs its e_score_correction_bias in RouteContext")
        return group_limited_topk(gate_logits, moe, moe.top_k, ctx.correction_bias)
