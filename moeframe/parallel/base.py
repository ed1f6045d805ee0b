"""The parallel-strategy interface: how a model's weights and MoE tokens are spread over ranks.

A strategy is built before the model (it joins the process group and checks
the model's shapes against the world size, so a bad choice fails at start,
identically on every rank), hands each MoE layer its ExpertRunner, and cuts
the model, still on the meta device, down to its rank's part (``shard``),
the way torchtitan's ``parallelize`` step follows model construction; the
loader then reads each full tensor and keeps only that part.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch

from moeframe.model.layers.context import ForwardContext
from moeframe.model.layers.moe import ExpertRunner
from moeframe.model.spec import AttentionSpec
from moeframe.parallel.slicing import WeightSlicer

if TYPE_CHECKING:
    from moeframe.model.causal_lm import CausalLM


class ParallelStrategy(ABC):
    name: str = "single"
    rank: int = 0
    world_size: int = 1
    # False where a forward syncs with the host (split sizes read back, timed collectives):
    # the engine then decodes eagerly instead of capturing CUDA graphs.
    cuda_graph_safe: bool = True

    @abstractmethod
    def expert_runner(self, layer_idx: int) -> ExpertRunner:
        """How layer ``layer_idx`` sends routed tokens to its experts and gathers the results."""

    def shard(self, model: "CausalLM") -> WeightSlicer:
        """Cut the meta-device model down to this rank's part, before loading; the slicer cuts each loaded tensor alike."""
        return WeightSlicer({})

    def holds_layer(self, layer_idx: int) -> bool:
        """Whether this rank computes layer ``layer_idx`` (and keeps its KV); pipeline stages hold a range."""
        return True

    def forward(self, model: "CausalLM", ctx: ForwardContext) -> torch.Tensor:
        """One forward step's logits on this rank; a pipeline runs it stage by stage over micro-batches."""
        return model(ctx)

    def local_attention(self, attention: AttentionSpec) -> AttentionSpec:
        """The attention shape this rank computes and caches (the KV pool is sized from it)."""
        return attention

    def stats(self) -> dict[str, Any]:
        """Communication and load figures for ``engine.stats()["parallel"]``."""
        return {"strategy": self.name, "rank": self.rank, "world_size": self.world_size}
