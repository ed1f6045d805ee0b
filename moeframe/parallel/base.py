"""The parallel-strategy interface: how a model's weights and MoE tokens are spread over ranks."""

from __future__ import annotations

from abc import ABC, abstractmethod

from moeframe.model.layers.moe import ExpertRunner


class ParallelStrategy(ABC):
    rank: int = 0
    world_size: int = 1

    @abstractmethod
    def expert_runner(self, layer_idx: int) -> ExpertRunner:
        """How layer ``layer_idx`` sends routed tokens to its experts and gathers the results."""
