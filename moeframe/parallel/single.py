"""parallel=single: one device holds every weight; experts run locally."""

from __future__ import annotations

from moeframe.model.layers.moe import ExpertRunner, LocalExperts
from moeframe.parallel import PARALLEL
from moeframe.parallel.base import ParallelStrategy
from moeframe.registry import NoParams


@PARALLEL.register("single")
class SingleDevice(ParallelStrategy):
    name = "single"

    def __init__(self, params: NoParams, **_: object) -> None:
        self.local = LocalExperts()

    def expert_runner(self, layer_idx: int) -> ExpertRunner:
        return self.local
