"""The one output type of every router: which experts each token visits, and with what weight."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RoutingPlan:
    """Assignments of T tokens to experts, k columns per token.

    ``topk_ids`` [T, k] int64 holds an expert id, or -1 where the assignment
    was dropped (capacity overflow, or an expert-choice column a token did not
    get); ``topk_weights`` [T, k] float32 is 0 wherever ``topk_ids`` is -1.
    Expert kernels skip dropped assignments.
    """

    topk_ids: torch.Tensor
    topk_weights: torch.Tensor

    @property
    def kept(self) -> torch.Tensor:
        return self.topk_ids >= 0

    @property
    def num_tokens(self) -> int:
        return self.topk_ids.shape[0]

    def expert_counts(self, num_experts: int) -> torch.Tensor:
        """Tokens routed to each expert, [E] int64 (dropped assignments not counted)."""
        ids = self.topk_ids[self.kept]
        return torch.bincount(ids, minlength=num_experts)
