"""parallel=tensor: every rank holds a slice of every layer (Megatron-LM tensor parallelism).

Attention heads (GQA and MLA) and the widths of dense MLPs, shared experts
and all routed experts are split over ranks; the output projections and the
expert sum are all-reduced (two all-reduces per layer, as in vLLM's and
SGLang's TP). Embeddings, norms, router gates and the LM head stay whole on
every rank, so every rank routes and samples the same tokens. KV heads fewer
than ranks are replicated, as vLLM does. Attention heads not divisible by
the world size fail at start. In float32 outputs equal single's to rounding;
in bfloat16 they differ at bf16 rounding level (partial sums are rounded
before the all-reduce, and the sharded q/k norm is not the fused kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from moeframe.experts.base import ExpertsKernel
from moeframe.model.layers.attention import Attention
from moeframe.model.layers.mla import MultiLatentAttention
from moeframe.model.layers.mlp import GatedMLP
from moeframe.model.layers.moe import ExpertRunner, MoEBlock
from moeframe.model.spec import AttentionSpec, ModelSpec
from moeframe.parallel import PARALLEL
from moeframe.parallel.base import ParallelStrategy
from moeframe.parallel.clock import ForwardClock, comm_stats
from moeframe.parallel.comm import Comm, CommMeter
from moeframe.parallel.distributed import init_distributed
from moeframe.parallel.slicing import WeightSlicer
from moeframe.parallel.tp_layers import (
    check_heads,
    local_attention_spec,
    shard_attention,
    shard_expert_columns,
    shard_gated_mlp,
    shard_mla,
)
from moeframe.routers.plan import RoutingPlan


@dataclass
class TensorParams:
    time_comm: bool = True  # synchronise around collectives on CUDA to time them


class TensorParallelExperts:
    """Each rank runs every expert on its slice of the width; the partial outputs are summed."""

    def __init__(self, comm: Comm) -> None:
        self.comm = comm

    def run_experts(
        self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, plan: RoutingPlan, kernel: ExpertsKernel
    ) -> torch.Tensor:
        return self.comm.all_reduce(kernel.forward(hidden, w13, w2, plan))


def shard_model_tensor_parallel(model: Any, world_size: int, rank: int, comm: Comm) -> None:
    for layer in model.layers:
        if isinstance(layer.self_attn, MultiLatentAttention):
            shard_mla(layer.self_attn, world_size, rank, comm)
        elif isinstance(layer.self_attn, Attention):
            shard_attention(layer.self_attn, world_size, rank, comm)
        if isinstance(layer.mlp, MoEBlock):
            shard_expert_columns(layer.mlp, world_size, rank, comm)
        elif isinstance(layer.mlp, GatedMLP):
            shard_gated_mlp(layer.mlp, world_size, rank, comm)


@PARALLEL.register("tensor", params=TensorParams)
class TensorParallel(ParallelStrategy):
    name = "tensor"

    def __init__(self, params: TensorParams, spec: ModelSpec, device: torch.device, **_: object) -> None:
        world = init_distributed(device)
        self.rank, self.world_size = world.rank, world.world_size
        check_heads(spec.attention, self.world_size)
        self.comm = Comm(None, CommMeter(params.time_comm))
        self.clock = ForwardClock(sync_cuda=params.time_comm)
        self.runner = TensorParallelExperts(self.comm)
        self.cuda_graph_safe = not params.time_comm

    def expert_runner(self, layer_idx: int) -> ExpertRunner:
        return self.runner

    def shard(self, model: Any) -> WeightSlicer:
        shard_model_tensor_parallel(model, self.world_size, self.rank, self.comm)
        self.clock.attach(model)
        return WeightSlicer.of(model)

    def local_attention(self, attention: AttentionSpec) -> AttentionSpec:
        return local_attention_spec(attention, self.world_size)

    def stats(self) -> dict[str, Any]:
        return super().stats() | comm_stats(self.comm.meter, self.clock)

