"""What every layer of one forward step shares: the batch layout, the KV pool and the kernels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeframe.attention import AttendFn, QKVPrologue, attend_with_prologue
from moeframe.attention.batch import ForwardBatch
from moeframe.model.layers.routes import StepRoutes


@dataclass
class ForwardContext:
    batch: ForwardBatch
    k_cache: list[torch.Tensor]  # per layer [S, Hkv, Dk]
    v_cache: list[torch.Tensor]  # per layer [S, Hkv, Dv]
    attend: AttendFn
    routes: StepRoutes | None = None  # where the MoE layers record routes, and routes they follow

    def attend_prologue(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prologue: QKVPrologue, layer_idx: int, scale: float
    ) -> torch.Tensor:
        """Layer ``layer_idx``'s attention of raw q/k/v rows: the prologue (k and v written at the batch's out
        slots), then attention; one launch where the backend fuses them (attention.attend_with_prologue)."""
        k_cache, v_cache = self.k_cache[layer_idx], self.v_cache[layer_idx]
        return attend_with_prologue(self.attend, q, k, v, prologue, k_cache, v_cache, self.batch, scale)
