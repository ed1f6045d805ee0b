"""An analytic cost model of one expert-parallel MoE step, to plan cluster sizes we do not have.

Assumptions, all stated so a reader can disagree with them:
- data-parallel attention: each of W GPUs originates T/W of the step's T
  tokens, and routes them with the recorded per-layer expert distribution;
- experts in contiguous blocks (plus EPLB replicas, see placement.py) and a
  replica's tokens split evenly;
- dispatch and combine move H activations of ``bytes_per_value`` per kept
  assignment leaving its GPU; NVLink (within a node) and the network (across
  nodes) run concurrently, so an all-to-all takes the larger of the two
  times, on the busiest GPU, sending or receiving (DeepEP's normal mode);
- expert time on a GPU is the roofline max of its FLOPs (6*H*I per token:
  gate, up, down) at ``tflops`` and of reading its experts' weights at
  ``hbm_gbps``; communication does not overlap computation unless
  ``overlap`` (DeepSeek-V3's two-micro-batch overlap) is set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeframe.parallel.placement import LayerPlacement, add_redundant_experts, contiguous_placement, imbalance


@dataclass(frozen=True)
class Hardware:
    gpus_per_node: int = 8
    nvlink_gbps: float = 450.0  # GB/s per GPU, one direction
    network_gbps: float = 50.0  # GB/s per GPU (400 Gb/s NIC)
    tflops: float = 400.0  # sustained dense TFLOP/s in the expert GEMMs
    hbm_gbps: float = 3000.0  # GB/s
    overlap: bool = False


@dataclass(frozen=True)
class MoEShape:
    hidden_size: int
    expert_intermediate: int
    top_k: int
    num_sparse_layers: int
    bytes_per_value: int = 2  # bf16 activations and weights


def layer_cost(shares: torch.Tensor, placement: LayerPlacement, shape: MoEShape, tokens: int, hw: Hardware) -> dict:
    """One layer; ``shares`` [E] sums to 1: the fraction of assignments each expert gets."""
    world = placement.world_size
    replicas = [len(r) for r in placement.replicas()]
    # fraction of all assignments each GPU computes
    rank_share = [sum(float(shares[e]) / replicas[e] for e in experts) for experts in placement.rank_experts]
    row_bytes = shape.hidden_size * shape.bytes_per_value
    assignments = tokens * shape.top_k
    node = [r // hw.gpus_per_node for r in range(world)]
    worst_s, sent_total = 0.0, 0.0
    for r in range(world):
        same_node = sum(rank_share[d] for d in range(world) if node[d] == node[r] and d != r)
        other_node = sum(rank_share[d] for d in range(world) if node[d] != node[r])
        send = (assignments / world) * row_bytes
        send_time = max(send * same_node / (hw.nvlink_gbps * 1e9), send * other_node / (hw.network_gbps * 1e9))
        # every origin sends rank r its share of its T/W tokens; (W-1)/W of them come from other GPUs
        peers_in_node = sum(1 for d in range(world) if node[d] == node[r] and d != r)
        recv = assignments * rank_share[r] * row_bytes / world
        recv_time = max(recv * peers_in_node / (hw.nvlink_gbps * 1e9), recv * (world - 1 - peers_in_node) / (hw.network_gbps * 1e9))
        worst_s = max(worst_s, send_time, recv_time)
        sent_total += send * (same_node + other_node)
    weight_bytes = 3 * shape.hidden_size * shape.expert_intermediate * shape.bytes_per_value
    expert_s = max(
        max(6 * shape.hidden_size * shape.expert_intermediate * assignments * s / (hw.tflops * 1e12) for s in rank_share),
        max(len(experts) * weight_bytes / (hw.hbm_gbps * 1e9) for experts in placement.rank_experts),
    )
    all_to_all_s = 2 * worst_s  # dispatch, then combine of the same volume
    return {
        "all_to_all_bytes": 2 * sent_total,
        "all_to_all_s": all_to_all_s,
        "expert_s": expert_s,
        "step_s": max(expert_s, all_to_all_s) if hw.overlap else expert_s + all_to_all_s,
        "imbalance": imbalance(rank_share),
    }


def estimate(counts: torch.Tensor, shape: MoEShape, world_size: int, tokens: int, hw: Hardware, redundant: int = 0) -> dict:
    """Per-step totals over the model's sparse layers, cycling the recorded layers' distributions over them."""
    recorded = [row / row.sum() for row in counts.double() if row.sum() > 0]
    if not recorded:
        raise ValueError("the expert counts are all zero: record a run of an MoE model first")
    num_experts = counts.shape[1]
    base = contiguous_placement(num_experts, world_size)
    layers = []
    for i in range(shape.num_sparse_layers):
        shares = recorded[i % len(recorded)]
        placement = add_redundant_experts(base, shares, redundant) if redundant else base
        layers.append(layer_cost(shares, placement, shape, tokens, hw))
    step_s = sum(x["step_s"] for x in layers)
    all_to_all_s = sum(x["all_to_all_s"] for x in layers)
    return {
        "gpus": world_size,
        "nodes": -(-world_size // hw.gpus_per_node),
        "experts_per_gpu": -(-num_experts // world_size),
        "imbalance": max(x["imbalance"] for x in layers),
        "all_to_all_gb": sum(x["all_to_all_bytes"] for x in layers) / 1e9,
        "all_to_all_ms": all_to_all_s * 1e3,
        "expert_ms": sum(x["expert_s"] for x in layers) * 1e3,
        "moe_step_ms": step_s * 1e3,
        "comm_share": all_to_all_s / (all_to_all_s + sum(x["expert_s"] for x in layers)),
        "tokens_per_s": tokens / step_s,
    }
