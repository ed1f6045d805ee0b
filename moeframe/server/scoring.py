"""Log-probabilities of continuations of a prompt, by teacher forcing: how ``select`` compares choices.

Each continuation is tokenised together with the prompt (so a token that
straddles the boundary is scored as the model would see it) and scored from
the first token where it differs from the prompt's own tokens. SGLang's
``select`` scores choices the same way and, by default, compares them by
mean token log-probability (length-normalised), which is what
:func:`best_choice` does.
"""

from __future__ import annotations

import torch

from moeframe.api import Engine
from moeframe.errors import RequestError


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def continuation_logprobs(engine: Engine, prompt: str, continuations: list[str]) -> list[list[float]]:
    """Per continuation, the log-probability of each of its tokens given everything before it."""
    if not continuations:
        raise RequestError("give at least one continuation to score")
    prompt_ids = engine.encode(prompt)
    scored = []
    for text in continuations:
        full = engine.encode(prompt + text)
        start = max(1, common_prefix_len(prompt_ids, full))
        if start >= len(full):
            scored.append([])
            continue
        logits = engine.score(full)
        logp = torch.log_softmax(logits[start - 1 : len(full) - 1].float(), dim=-1)
        targets = torch.tensor(full[start:], device=logp.device)
        scored.append(logp.gather(-1, targets[:, None])[:, 0].tolist())
    return scored


def best_choice(logprobs: list[list[float]]) -> int:
    """Index of the continuation with the highest mean token log-probability (first on ties)."""
    means = [sum(lp) / len(lp) if lp else float("-inf") for lp in logprobs]
    return max(range(len(means)), key=lambda i: (means[i], -i))
