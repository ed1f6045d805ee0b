"""Transformers' own routing of a token sequence, and the comparison of returned routes with it.

The reference is what each router module of the transformers model chose
(its top-k indices) over the whole sequence in one forward, with the gate
logits it returned (``output_router_logits=True``); two ids of a token may
differ only where their choice scores tie within ``tol``.
"""

from __future__ import annotations

from pathlib import Path

import torch


def hf_routes(path: Path, token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """transformers' chosen experts and their weights [N, MoE layers, k], and choice scores [N, MoE layers, E]."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager").eval()
    routers = [m for m in model.modules() if type(m).__name__.lower().endswith("router")]
    chosen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [r.register_forward_hook(lambda _m, _i, out: chosen.append((out[2], out[1]))) for r in routers]
    try:
        with torch.no_grad():
            out = model(torch.tensor([token_ids]), output_router_logits=True)
    finally:
        for hook in hooks:
            hook.remove()
    scores = []
    for router, logits in zip(routers, out.router_logits, strict=True):
        bias = getattr(router, "e_score_correction_bias", None)
        scores.append(torch.softmax(logits.float(), -1) if bias is None else logits.float().sigmoid() + bias)
    ids, weights = (torch.stack([c[i] for c in chosen], dim=1) for i in (0, 1))
    return ids, weights, torch.stack(scores, dim=1)


def assert_routes_match(ours: torch.Tensor, ref_ids: torch.Tensor, scores: torch.Tensor, tol: float = 1e-5) -> None:
    """Per token and layer the same expert set as ``ref_ids``, but for ids whose choice scores tie within ``tol``."""
    assert ours.shape == ref_ids.shape, (ours.shape, ref_ids.shape)
    ours, ref_ids = ours.long().sort(-1).values, ref_ids.long().sort(-1).values
    for t, layer in (ours != ref_ids).any(-1).nonzero().tolist():
        mine, theirs = set(ours[t, layer].tolist()), set(ref_ids[t, layer].tolist())
        row = scores[t, layer]
        kth = min(row[i].item() for i in theirs)
        for expert in mine ^ theirs:
            assert abs(row[expert].item() - kth) <= tol, f"token {t} layer {layer}: {sorted(mine)} vs {sorted(theirs)}"
