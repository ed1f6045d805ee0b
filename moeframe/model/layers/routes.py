"""Routes as data: the experts each token of a forward went to, per MoE layer (DESIGN.md, "Routes are data").

A forward's routes are one tensor [T, MoE layers, k] of expert ids (and,
when asked, their weights), written by the MoE layers into a buffer the
model runner owns. Each MoE layer hands its RoutingPlan over; the last MoE
layer of the forward stacks them into the buffer in one launch, so a
captured decode graph writes them as part of its replay and the host reads
them back beside the step's token ids (SGLang's routed-experts capturer
keeps a device buffer per forward the same way, vLLM's likewise).

The buffer has two halves that forwards take in turns: with overlapped
decode, step n + 1 runs while step n's routes are still being copied to the
host, so it must write the other half. A forward waits for the copy out of
its half (``ModelRunner.read_back_routes`` records it) before it writes.

A forward can also carry routes to follow (``StepRoutes.replay``, for
``router=replay``): one row of ids per token in the same layout, -1 where a
token has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moeframe.routers.plan import RoutingPlan


class RouteBuffer:
    """Each forward's routes [T, L, k] (L: the MoE layers, in order), in one of two halves on the device.

    The width k is the routers' plan width, known at the first forward (it
    is allocated then, before any CUDA-graph capture, whose warm-up forwards
    run eagerly first). Plans are referenced, not copied, until the last MoE
    layer records: a router must hand over fresh ids each call (every router
    here allocates them), as the batched expert-load recorder also needs.
    """

    def __init__(self, moe_layers: Sequence[int], max_tokens: int, device: torch.device, weights: bool = False) -> None:
        if not moe_layers:
            raise ValueError("routes are recorded only for a model with MoE layers")
        self.moe_index = {layer: j for j, layer in enumerate(moe_layers)}
        self.first_layer, self.last_layer = moe_layers[0], moe_layers[-1]
        self.max_tokens, self.device, self.with_weights = max_tokens, device, weights
        self.ids: torch.Tensor | None = None  # [2, max_tokens, L, k] int64
        self.weights: torch.Tensor | None = None  # [2, max_tokens, L, k] float32, when asked for
        self.half = 0  # the half the current forward writes
        self.pending: list[RoutingPlan] = []

    @property
    def num_layers(self) -> int:
        return len(self.moe_index)

    def use(self, half: int) -> None:
        """The next forward writes half ``half``."""
        self.half = half

    def record(self, layer_idx: int, plan: RoutingPlan) -> None:
        if layer_idx == self.first_layer:
            self.pending = []  # a forward that stopped early (an exception) leaves its plans behind
        self.pending.append(plan)
        if layer_idx != self.last_layer:
            return
        plans, self.pending = self.pending, []
        num_tokens, width = plans[0].topk_ids.shape
        if num_tokens > self.max_tokens:
            raise ValueError(f"a forward of {num_tokens} tokens: the route buffer holds {self.max_tokens}")
        if len(plans) != self.num_layers or any(p.topk_ids.shape != (num_tokens, width) for p in plans):
            raise ValueError(f"route buffer: {len(plans)} plans of one forward for {self.num_layers} MoE layers, of one width each")
        if self.ids is None:
            shape = (2, self.max_tokens, self.num_layers, width)
            self.ids = torch.full(shape, -1, dtype=torch.int64, device=self.device)
            if self.with_weights:
                self.weights = torch.zeros(shape, dtype=torch.float32, device=self.device)
        elif self.ids.shape[-1] != width:
            raise ValueError(f"routes of width {width} after width {self.ids.shape[-1]}: every forward's plans must share k")
        torch.stack([p.topk_ids for p in plans], dim=1, out=self.ids[self.half, :num_tokens])
        if self.weights is not None:
            torch.stack([p.topk_weights.float() for p in plans], dim=1, out=self.weights[self.half, :num_tokens])

    def view(self, half: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ids [T, L, k] (and weights) a forward of ``num_tokens`` wrote into ``half``."""
        if self.ids is None:
            raise RuntimeError("no forward has recorded routes yet")
        weights = None if self.weights is None else self.weights[half, :num_tokens]
        return self.ids[half, :num_tokens], weights


@dataclass
class StepRoutes:
    """What one forward does with routes: record them (``record``), follow given ones (``replay`` [T, L, k])."""

    moe_index: dict[int, int]  # layer index -> its place among the MoE layers
    record: RouteBuffer | None = None
    replay: torch.Tensor | None = None

    def replay_ids(self, layer_idx: int) -> torch.Tensor | None:
        """Layer ``layer_idx``'s ids to follow [T, k] (-1 rows: none given), or None."""
        return None if self.replay is None else self.replay[:, self.moe_index[layer_idx]]
