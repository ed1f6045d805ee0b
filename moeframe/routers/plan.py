"""The one output type of every router: which experts each token visits, and with what weight."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PendingTopk:
    """A softmax top-k the routing launch left to the experts' kernels (experts.rank_topk).

    ``logits`` [T, E] float32 are the gate logits; the plan's ids and weights
    are those of softmax top-k ``k`` of them (renormalised over the k when
    ``renormalize``, times ``scale``), written by the experts' first launch.
    """

    logits: torch.Tensor
    k: int
    renormalize: bool
    scale: float


@dataclass
class RoutingPlan:
    """Assignments of T tokens to experts, k columns per token.

    ``topk_ids`` [T, k] int64 holds an expert id, or -1 where the assignment
    was dropped (capacity overflow, or an expert-choice column a token did not
    get); ``topk_weights`` [T, k] float32 is 0 wherever ``topk_ids`` is -1.
    Expert kernels skip dropped assignments. With ``pending`` the two are
    filled on the device by the experts' first launch, which routes from the
    pending logits (only for an experts kernel that asked for it, through
    RouteContext.defer_topk); read them after the experts ran.
    """

    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    pending: PendingTopk | None = None

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
