"""Logits -> next tokens: greedy, temperature, top-k, top-p, and per-request seeds.

Greedy rows take one batched argmax; sampled rows are filtered in one batched
pass and drawn with each request's own generator when it has a seed, so a
seeded request gives the same tokens whatever its batch-mates (vLLM's
per-request generators do the same).
"""

from __future__ import annotations

import torch

from moeframe.engine.request import Request


def filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """logits [B, V]; top_k [B] (V = off); top_p [B] (1 = off) -> logits with the rest at -inf."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    drop = ranks >= top_k[:, None]
    probs = torch.softmax(sorted_logits, dim=-1)
    cum_before = probs.cumsum(dim=-1) - probs
    drop |= cum_before >= top_p[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def sample(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    """logits [B, V] float32 (masked already) -> token ids [B] int64."""
    next_ids = logits.argmax(dim=-1)
    sampled = [i for i, r in enumerate(requests) if r.params.temperature > 0]
    if not sampled:
        return next_ids
    rows = torch.tensor(sampled, device=logits.device)
    vocab = logits.shape[-1]
    temps = torch.tensor([requests[i].params.temperature for i in sampled], device=logits.device)
    top_k = torch.tensor([requests[i].params.top_k if requests[i].params.top_k > 0 else vocab for i in sampled], device=logits.device)
    top_p = torch.tensor([requests[i].params.top_p for i in sampled], device=logits.device)
    probs = torch.softmax(filter_top_k_top_p(logits[rows] / temps[:, None], top_k, top_p), dim=-1)
    for j, i in enumerate(sampled):
        gen = requests[i].generator
        if gen is not None and gen.device != probs.device:
            draw = torch.multinomial(probs[j].cpu(), 1, generator=gen).to(probs.device)
        else:
            draw = torch.multinomial(probs[j], 1, generator=gen)
        next_ids[i] = draw[0]
    return next_ids


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, top_n: int) -> list[dict]:
    """Per row: the chosen token's logprob and the top_n alternatives (OpenAI's logprobs shape)."""
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(-1, token_ids[:, None])[:, 0].tolist()
    out = []
    if top_n > 0:
        top_vals, top_ids = logp.topk(top_n, dim=-1)
        tops = list(zip(top_ids.tolist(), top_vals.tolist()))
    for r, tok in enumerate(token_ids.tolist()):
        entry = {"token_id": tok, "logprob": chosen[r]}
        entry["top"] = [{"token_id": i, "logprob": v} for i, v in zip(*tops[r])] if top_n > 0 else []
        out.append(entry)
    return out
