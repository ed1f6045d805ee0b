"""Gate logits to per-expert scores, and chosen experts to mixing weights.

Every router weights an assignment by the checkpoint-style score of that
expert (softmax probability or sigmoid affinity), optionally renormalised over
the token's kept assignments, times the checkpoint's routed_scaling_factor:
that factor calibrates the scale of the expert output the model was trained
with (DeepSeek-V3 uses 2.5), not the choice, so keeping it makes a router
ablation change one thing.
"""

from __future__ import annotations

import torch


def expert_scores(gate_logits: torch.Tensor, scoring: str) -> torch.Tensor:
    """[T, E] float32 softmax probabilities or sigmoid affinities."""
    logits = gate_logits.float()
    return torch.softmax(logits, dim=-1) if scoring == "softmax" else logits.sigmoid()


def expert_log_scores(gate_logits: torch.Tensor, scoring: str) -> torch.Tensor:
    """log of ``expert_scores``, computed without underflow."""
    logits = gate_logits.float()
    return torch.log_softmax(logits, dim=-1) if scoring == "softmax" else torch.nn.functional.logsigmoid(logits)


def assignment_weights(scores: torch.Tensor, ids: torch.Tensor, *, renormalize: bool, scale: float) -> torch.Tensor:
    """Weights [T, k] of the experts in ``ids`` (0 where the id is -1)."""
    kept = ids >= 0
    weights = scores.gather(1, ids.clamp_min(0)) * kept
    if renormalize:
        # the clamp only matters for a token with nothing kept (0 / tiny = 0)
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    return weights * scale
