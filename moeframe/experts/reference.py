"""The oracle: a loop over experts in plain torch, short enough to trust by reading.

Each token's output sums its experts in ascending expert id, whatever the
batch; under batch-invariant mode (``deterministic``) each expert's matmuls
also run one token at a time (model/layers/batch_invariant.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moeframe.experts import EXPERTS
from moeframe.experts.base import ExpertsKernel
from moeframe.model.layers.batch_invariant import linear
from moeframe.registry import NoParams
from moeframe.routers.plan import RoutingPlan


@EXPERTS.register("reference")
class ReferenceExperts(ExpertsKernel):
    def __init__(self, params: NoParams, **_: object) -> None:
        pass

    def forward(self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
        out = torch.zeros_like(hidden, dtype=torch.float32)
        for expert in torch.unique(plan.topk_ids[plan.kept]).tolist():
            token_idx, col = torch.nonzero(plan.topk_ids == expert, as_tuple=True)
            x = hidden[token_idx]
            gate, up = linear(x, w13[expert]).chunk(2, dim=-1)
            y = linear(F.silu(gate) * up, w2[expert])
            out.index_add_(0, token_idx, y.float() * plan.topk_weights[token_idx, col, None])
        return out.to(hidden.dtype)
