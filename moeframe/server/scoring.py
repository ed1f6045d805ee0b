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


def scored_inputs(engine: Engine, prompt: str, continuations: list[str]) -> list[tuple[list[int], int]]:
    """Per continuation, the token ids of prompt + continuation and where its scored tokens start.

    Tokenizing only: the server runs it on an admission thread.
    """
    if not continuations:
        raise RequestError("give at least one continuation to score")
    prompt_ids = engine.encode(prompt)
    inputs = []
    for text in continuations:
        full = engine.encode(prompt + text)
        inputs.append((full, max(1, common_prefix_len(prompt_ids, full))))
    return inputs


def token_logprobs_of(engine: Engine, full: list[int], start: int) -> list[float]:
    """The log-probability of each of ``full[start:]`` given everything before it (one forward: engine thread)."""
    if start >= len(full):
        return []
    logits = engine.score(full)
    logp = torch.log_softmax(logits[start - 1 : len(full) - 1].float(), dim=-1)
    targets = torch.tensor(full[start:], device=logp.device)
    return logp.gather(-1, targets[:, None])[:, 0].tolist()


def continuation_logprobs(engine: Engine, prompt: str, continuations: list[str]) -> list[list[float]]:
    """Per continuation, the log-probability of each of its tokens given everything before it."""
    return [token_logprobs_of(engine, full, start) for full, start in scored_inputs(engine, prompt, continuations)]


def best_choice(logprobs: list[list[float]]) -> int:
    """Index of the continuation with the highest mean token log-probability (first on ties)."""
    means = [sum(lp) / len(lp) if lp else float("-inf") for lp in logprobs]
    return max(range(len(means)), key=lambda i: (means[i], -i))
