"""Logits -> next tokens: greedy, temperature, top-k, top-p, and per-request seeds.

A batch of greedy requests costs one argmax and nothing else (nothing at all
when a CUDA graph computed the argmax with the logits). Sampled rows
are scaled, filtered only when some row asks for top-k or top-p (vLLM skips
the sort the same way), and drawn in one batched multinomial; a request with
a seed draws from its own generator instead, so it gives the same tokens
whatever its batch-mates (vLLM's per-request generators do the same). The
rows' settings go to the device in one copy.

Nothing here waits for the device, so overlapped decode (``EngineCore.step``)
can sample step n on the device and launch step n+1 on its ids before any of
them reach the host (SGLang's overlap scheduler, vLLM v1's async scheduling):
host lists reach a CUDA device through pinned, non-blocking copies (a copy
from pageable memory synchronizes the stream), and a seeded row's generator,
which lives on the host, only draws noise there: the choice is made on the
device, the same choice ``torch.multinomial`` makes from that noise.

A sampled row fails alone: logits are shifted by their row maximum before
the division by the temperature (softmax does not change, and no temperature
above zero, however tiny, overflows them), and a row whose maximum is not
finite (NaN, +inf, or no token allowed) draws from a uniform row instead of
making the whole batch's multinomial raise, and is reported in
``Draw.invalid`` for the engine to end that request with an error (vLLM and
SGLang clamp tiny temperatures instead; here the tokens stay those of the
exact distribution). Greedy rows need no guard: argmax is defined for any
logits.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from moeframe.engine.request import Request

# float32's smallest normal number: a temperature below it (or one that rounds to 0 in float32) divides as this
MIN_TEMPERATURE = torch.finfo(torch.float32).tiny


class Draw(NamedTuple):
    """Sampled token ids [B] (valid ids in every row) and, when any row was sampled, which rows were not finite."""

    ids: torch.Tensor
    invalid: torch.Tensor | None  # bool [B]; None when every row was greedy


def filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """logits [B, V]; top_k [B] (V = off); top_p [B] (1 = off) -> logits with the rest at -inf.

    A row with both off comes back unchanged, bit for bit: top_p = 1 drops
    nothing even where rounding brings the running sum to 1 early.
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    drop = ranks >= top_k[:, None]
    probs = torch.softmax(sorted_logits, dim=-1)
    cum_before = probs.cumsum(dim=-1) - probs
    drop |= (cum_before >= top_p[:, None]) & (top_p[:, None] < 1)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def to_device(values: list, device: torch.device) -> torch.Tensor:
    """A host list as a tensor on ``device``, without making the host wait for the work queued there."""
    host = torch.tensor(values)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def exponential_race(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """probs [V] -> one id drawn from them, the noise from ``generator`` on its own device.

    argmax(p / q) with q ~ Exp(1) picks id i with probability p_i; it is how
    ``torch.multinomial`` draws one sample, so for the same generator state
    it returns what ``torch.multinomial(probs, 1, generator=generator)`` would.
    """
    noise = torch.empty(probs.shape, dtype=probs.dtype, pin_memory=probs.is_cuda)
    noise.exponential_(generator=generator)
    return (probs / noise.to(probs.device, non_blocking=True)).argmax()


def sample(logits: torch.Tensor, requests: list[Request], argmax: torch.Tensor | None = None) -> Draw:
    """logits [B, V] float32 (masked already) -> token ids [B] int64, on the logits' device, and the invalid rows.

    ``argmax``: ``logits.argmax(-1)`` when the caller has it already (a CUDA
    graph computes it), so greedy rows launch nothing; its rows may be overwritten.
    Random numbers are drawn in row order: one batched draw from the global
    generator for the unseeded rows, then each seeded row from its own.
    """
    sampled = [i for i, r in enumerate(requests) if r.params.temperature > 0]
    every_row = len(sampled) == len(requests)
    device = logits.device
    if every_row:
        next_ids = torch.empty(len(requests), dtype=torch.int64, device=device)
    else:
        next_ids = logits.argmax(dim=-1) if argmax is None else argmax
    if not sampled:
        return Draw(next_ids, None)
    params = [requests[i].params for i in sampled]
    vocab = logits.shape[-1]
    settings = to_device(
        [[p.temperature for p in params], [p.top_k if p.top_k > 0 else vocab for p in params], [p.top_p for p in params]],
        device,
    )
    temps, top_k, top_p = settings.unbind(0)
    sampled_rows = None if every_row else to_device(sampled, device)
    rows = logits if every_row else logits.index_select(0, sampled_rows)
    row_max = rows.amax(dim=-1, keepdim=True)
    invalid = ~torch.isfinite(row_max[:, 0])
    scaled = ((rows - row_max) / temps.clamp(min=MIN_TEMPERATURE)[:, None]).masked_fill(invalid[:, None], 0.0)
    if not every_row:
        invalid = torch.zeros(len(requests), dtype=torch.bool, device=device).index_copy_(0, sampled_rows, invalid)
    if any(p.top_k > 0 or p.top_p < 1 for p in params):
        scaled = filter_top_k_top_p(scaled, top_k, top_p)
    probs = torch.softmax(scaled, dim=-1)
    unseeded = [j for j, i in enumerate(sampled) if requests[i].generator is None]
    if unseeded:
        all_unseeded = len(unseeded) == len(sampled)
        draws = torch.multinomial(probs if all_unseeded else probs.index_select(0, to_device(unseeded, device)), 1)[:, 0]
        if every_row and all_unseeded:
            next_ids = draws
        else:
            next_ids.index_copy_(0, to_device([sampled[j] for j in unseeded], device), draws)
    for j, i in enumerate(sampled):
        gen = requests[i].generator
        if gen is None:
            continue
        if gen.device == probs.device:
            next_ids[i] = torch.multinomial(probs[j], 1, generator=gen)[0]
        else:
            next_ids[i] = exponential_race(probs[j], gen)
    return Draw(next_ids, invalid)


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
