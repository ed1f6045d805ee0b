"""The EP cost model extended to pipeline x expert parallelism: S stages of E GPUs, a step run as M micro-batches.

Assumptions, beside ep_cost.py's (whose per-layer model each stage uses):
- the model's MoE layers are split evenly over the stages (the first stages
  take one more when they do not divide); stage s's time on a micro-batch is
  the sum of its layers' ``layer_cost`` at T/M tokens on its E GPUs, so a
  micro-batch reads the stage's expert weights again: where reading weights
  bounds a layer (decode), M micro-batches cost M reads;
- a stage sends the residual stream on, 2 x H values per token (the layer
  output and the residual, as parallel/pipeline.py sends them); each GPU
  sends the tokens it originates (ep_cost's data-parallel attention: T/(M E)
  per micro-batch; parallel/pipeline.py replicates attention and sends all
  of them), over NVLink when the two GPUs share a node, else the network,
  overlapping the sender's next micro-batch;
- the schedule is GPipe's forward fill-and-drain inside one step (what
  parallel=pipeline runs): micro-batch m finishes stage s at
  ``max(finish(s, m-1), finish(s-1, m) + send) + t(s)``; the last stage's
  logits broadcast is not counted.
GPU g sits in node g // gpus_per_node; stage s holds GPUs [s*E, (s+1)*E).
"""

from __future__ import annotations

import torch

from moeframe.parallel.ep_cost import Hardware, MoEShape, layer_cost
from moeframe.parallel.placement import add_redundant_experts, contiguous_placement
from moeframe.parallel.tp_layers import shard_range


def fill_drain(stage_seconds: list[float], send_seconds: list[float], micro_batches: int) -> float:
    """Seconds until the last stage finishes the last micro-batch; ``send_seconds[s]``: stage s to s+1, per micro-batch."""
    finish = [0.0] * len(stage_seconds)  # finish[s]: when stage s finished its latest micro-batch
    for _ in range(micro_batches):
        arrived = 0.0
        for s, busy in enumerate(stage_seconds):
            finish[s] = max(finish[s], arrived) + busy
            arrived = finish[s] + (send_seconds[s] if s < len(send_seconds) else 0.0)
    return finish[-1]


def estimate_pipeline(
    counts: torch.Tensor,
    shape: MoEShape,
    stages: int,
    ep_size: int,
    tokens: int,
    micro_batches: int,
    hw: Hardware,
    redundant: int = 0,
) -> dict:
    """One step of ``tokens`` tokens on ``stages`` x ``ep_size`` GPUs, with the recorded per-layer expert distributions."""
    if not 1 <= stages <= shape.num_sparse_layers:
        raise ValueError(f"{stages} stages for {shape.num_sparse_layers} MoE layers")
    recorded = [row / row.sum() for row in counts.double() if row.sum() > 0]
    if not recorded:
        raise ValueError("the expert counts are all zero: record a run of an MoE model first")
    base = contiguous_placement(counts.shape[1], ep_size)
    micro_tokens = tokens / micro_batches
    layer_s = []
    for i in range(shape.num_sparse_layers):
        shares = recorded[i % len(recorded)]
        placement = add_redundant_experts(base, shares, redundant) if redundant else base
        layer_s.append(layer_cost(shares, placement, shape, micro_tokens, hw)["step_s"])
    stage_s = [sum(layer_s[lo:hi]) for lo, hi in (shard_range(len(layer_s), stages, s) for s in range(stages))]
    send_bytes = 2 * shape.hidden_size * shape.bytes_per_value * micro_tokens / ep_size  # per GPU and micro-batch
    send_s = []
    for s in range(stages - 1):
        crosses = (s * ep_size) // hw.gpus_per_node != ((s + 1) * ep_size) // hw.gpus_per_node
        send_s.append(send_bytes / ((hw.network_gbps if crosses else hw.nvlink_gbps) * 1e9))
    step_s = fill_drain(stage_s, send_s, micro_batches)
    busy = micro_batches * sum(stage_s)
    return {
        "gpus": stages * ep_size,
        "stages": stages,
        "ep_size": ep_size,
        "micro_batches": micro_batches,
        "stage_ms": max(stage_s) * 1e3,
        "moe_step_ms": step_s * 1e3,
        "bubble_share": 1 - busy / (stages * step_s),
        "p2p_gb": (stages - 1) * micro_batches * ep_size * send_bytes / 1e9,
        "tokens_per_s": tokens / step_s,
    }
