"""parallel=expert: routed experts partitioned over ranks, tokens moved by all-to-all (GShard-style EP).

Attention, dense layers, shared experts, router gates and the LM head are
replicated and every rank runs the same batch: the simplest choice that
keeps routing (batch-dependent routers included) and sampling identical on
every rank, and it needs no change to the scheduler. The MoE layers then
split the work: each rank dispatches its share of the tokens to the experts'
owners (see dispatch.py). Data-parallel attention (SGLang's DP attention)
would cut the replicated attention work; it needs per-rank schedulers and is
not done here.

With ``tp_size=t`` the W ranks form a [W/t, t] grid: attention, dense
layers and shared experts run tensor parallel inside each group of t
consecutive ranks (tp_layers.py), experts are split over the W/t groups,
and each expert's width over the t ranks of a group; a layer then
dispatches inside the EP group of its TP position and all-reduces the width
slices over its TP group (the EP x TP layout of Megatron-Core's MoE).

Experts sit in contiguous blocks, uneven when the expert count does not
divide the world size; ``redundant_experts=r`` adds up to r replicas of the
hottest experts per layer (placement.py), from a load file recorded by an
earlier run (``load_file``: a counts file or that run's metrics.json).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from moeframe.errors import ConfigError
from moeframe.model.layers.moe import ExpertRunner, MoEBlock
from moeframe.model.spec import AttentionSpec, ModelSpec
from moeframe.parallel import PARALLEL
from moeframe.parallel.base import ParallelStrategy
from moeframe.parallel.clock import ForwardClock, comm_stats
from moeframe.parallel.comm import Comm, CommMeter
from moeframe.parallel.dispatch import ExpertParallelRunner
from moeframe.parallel.distributed import grid_groups, init_distributed
from moeframe.parallel.load_file import read_expert_counts
from moeframe.parallel.slicing import WeightSlicer, cut
from moeframe.parallel.placement import (
    LayerPlacement,
    add_redundant_experts,
    contiguous_placement,
    imbalance,
    placement_report,
)
from moeframe.parallel.tensor import shard_model_tensor_parallel
from moeframe.parallel.tp_layers import check_heads, local_attention_spec

log = logging.getLogger(__name__)


@dataclass
class ExpertParams:
    tp_size: int = 1  # ranks of each tensor-parallel group inside expert parallelism (must divide the world size)
    redundant_experts: int = 0  # at most this many replicas of hot experts added per layer (EPLB)
    load_file: str | None = None  # recorded expert counts: {"counts": [[...]]} or a run's metrics.json
    time_comm: bool = True  # synchronise around collectives on CUDA to time them

    def __post_init__(self) -> None:
        if self.tp_size < 1:
            raise ValueError(f"tp_size must be >= 1, got {self.tp_size}")
        if self.redundant_experts < 0:
            raise ValueError(f"redundant_experts must be >= 0, got {self.redundant_experts}")
        if self.redundant_experts > 0 and self.load_file is None:
            raise ValueError("redundant_experts > 0 needs load_file (expert counts recorded by an earlier run)")


def layer_placements(spec: ModelSpec, world_size: int, params: ExpertParams) -> tuple[dict[int, LayerPlacement], list[dict]]:
    num_experts = spec.moe.num_experts
    base = contiguous_placement(num_experts, world_size)
    sparse = [i for i, is_sparse in enumerate(spec.sparse_layers) if is_sparse]
    if params.redundant_experts == 0:
        return {i: base for i in sparse}, []
    counts = read_expert_counts(params.load_file)
    if tuple(counts.shape) != (spec.num_layers, num_experts):
        raise ConfigError(
            f"parallel.load_file: counts are {tuple(counts.shape)} (layers x experts) but the model has "
            f"{spec.num_layers} layers of {num_experts} experts"
        )
    placed, report = {}, []
    for i in sparse:
        placed[i] = add_redundant_experts(base, counts[i], params.redundant_experts)
        report.append(placement_report(i, base, placed[i], counts[i]))
    return placed, report


def keep_experts(moe: MoEBlock, experts: tuple[int, ...]) -> None:
    """Cut the meta-device block down to the routed experts ``experts`` (this rank's slots, replicas included)."""
    local = torch.tensor(experts)
    moe.w13 = cut(moe.w13, 0, local)
    moe.w2 = cut(moe.w2, 0, local)


@PARALLEL.register("expert", params=ExpertParams)
class ExpertParallel(ParallelStrategy):
    name = "expert"
    cuda_graph_safe = False  # split sizes of the all-to-all are read back on the host each layer

    def __init__(self, params: ExpertParams, spec: ModelSpec, device: torch.device, **_: object) -> None:
        world = init_distributed(device)
        self.rank, self.world_size, self.tp_size = world.rank, world.world_size, params.tp_size
        if not spec.is_moe:
            raise ConfigError(f"parallel=expert needs an MoE model; {spec.family} has no routed experts (use parallel=tensor)")
        if self.world_size % self.tp_size:
            raise ConfigError(f"parallel.tp_size={self.tp_size} does not divide the world size ({self.world_size})")
        self.ep_size = self.world_size // self.tp_size
        check_heads(spec.attention, self.tp_size)
        if self.ep_size > spec.moe.num_experts:
            raise ConfigError(
                f"parallel=expert: {self.ep_size} expert-parallel ranks but only {spec.moe.num_experts} experts; "
                f"use at most {spec.moe.num_experts} ranks (times tp_size)"
            )
        self.placements, self.placement_report = layer_placements(spec, self.ep_size, params)
        meter = CommMeter(params.time_comm)
        tp_group, ep_group = grid_groups(self.world_size, self.tp_size)
        self.tp_comm = Comm(tp_group, meter) if self.tp_size > 1 else None
        self.comm = Comm(ep_group, meter)
        self.clock = ForwardClock(sync_cuda=params.time_comm)
        self.rank_load = torch.zeros(spec.num_layers, self.ep_size, dtype=torch.long, device=device)
        self.runners = {
            i: ExpertParallelRunner(p, self.comm, self.rank_load[i], self.tp_comm) for i, p in self.placements.items()
        }
        if world.is_main and self.placement_report:
            for layer in self.placement_report:
                log.info("expert placement %s", layer)

    def expert_runner(self, layer_idx: int) -> ExpertRunner:
        return self.runners[layer_idx]

    def shard(self, model: Any) -> WeightSlicer:
        for i, layer in enumerate(model.layers):
            if isinstance(layer.mlp, MoEBlock):
                keep_experts(layer.mlp, self.placements[i].rank_experts[self.comm.rank])
        if self.tp_comm is not None:
            shard_model_tensor_parallel(model, self.tp_size, self.tp_comm.rank, self.tp_comm)
        self.clock.attach(model)
        return WeightSlicer.of(model)

    def local_attention(self, attention: AttentionSpec) -> AttentionSpec:
        return local_attention_spec(attention, self.tp_size)

    def stats(self) -> dict[str, Any]:
        rank_load = self.rank_load.cpu()
        per_rank = rank_load.sum(dim=0).tolist()
        layers = [i for i in self.placements if rank_load[i].sum() > 0]
        out = super().stats() | comm_stats(self.comm.meter, self.clock)
        out |= {
            "tp_size": self.tp_size,
            "ep_size": self.ep_size,
            "slots_per_rank": {i: p.slots_per_rank for i, p in self.placements.items()},
            "rank_load": per_rank,
            "rank_load_imbalance": imbalance([float(x) for x in per_rank]),
            "max_layer_imbalance": max((imbalance([float(x) for x in rank_load[i].tolist()]) for i in layers), default=0.0),
        }
        if self.placement_report:
            out["placement"] = self.placement_report
        return out
