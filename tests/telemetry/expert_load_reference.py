"""A brute-force count of routing plans, the reference the expert-load tests compare against."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from moeframe.telemetry.expert_load import LayerPlan


def brute_force_counters(plans: Iterable[LayerPlan], num_layers: int, num_experts: int) -> list[torch.Tensor]:
    """counts [L, E], dropped, tokens, unrouted [L], counted entry by entry in Python."""
    counts = [[0] * num_experts for _ in range(num_layers)]
    dropped, tokens, unrouted = ([0] * num_layers for _ in range(3))
    for plan in plans:
        rows, layer = plan.topk_ids.tolist(), plan.layer_idx
        kept = 0
        for row in rows:
            for expert in row:
                if expert >= 0:
                    counts[layer][expert] += 1
                    kept += 1
            unrouted[layer] += all(expert < 0 for expert in row)
        dropped[layer] += max(len(rows) * plan.budget_k - kept, 0)
        tokens[layer] += len(rows)
    return [torch.tensor(counts), torch.tensor(dropped), torch.tensor(tokens), torch.tensor(unrouted)]


def random_ids(num_tokens: int, columns: int, num_experts: int, seed: int, drop: float = 0.3) -> torch.Tensor:
    """[T, C] int64 expert ids, a share ``drop`` of them -1."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, num_experts, (num_tokens, columns), generator=generator)
    return ids.masked_fill(torch.rand(num_tokens, columns, generator=generator) < drop, -1)
