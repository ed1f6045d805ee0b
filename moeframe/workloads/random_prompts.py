"""workload=random: prompts of random token ids that share nothing (the no-reuse control).

Each prompt starts with a different token, so no prefix cache can serve any
of it: the run measures what a cache costs when it cannot help, the
random-input setting of vLLM's and SGLang's serving benchmarks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moeframe.workloads import WORKLOADS
from moeframe.workloads.driver import ClientParams, ClientRun, ClientWorkload, Submission, drive

if TYPE_CHECKING:
    from moeframe.api import Engine


@dataclass
class RandomParams(ClientParams):
    num_requests: int = 32
    min_prompt_tokens: int = 16
    max_prompt_tokens: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_requests < 1 or self.min_prompt_tokens < 1:
            raise ValueError("num_requests and min_prompt_tokens must be >= 1")
        if self.max_prompt_tokens < self.min_prompt_tokens:
            raise ValueError(f"max_prompt_tokens ({self.max_prompt_tokens}) is below min_prompt_tokens ({self.min_prompt_tokens})")


def random_prompts(params: RandomParams, vocab_size: int) -> list[list[int]]:
    """Prompts of uniform random ids in [1, vocab_size), with pairwise different first tokens."""
    if params.num_requests >= vocab_size:
        raise ValueError(f"{params.num_requests} prompts cannot all start differently in a vocabulary of {vocab_size}")
    rng = random.Random(params.seed)
    firsts = rng.sample(range(1, vocab_size), params.num_requests)
    prompts = []
    for first in firsts:
        n = rng.randint(params.min_prompt_tokens, params.max_prompt_tokens)
        prompts.append([first] + [rng.randrange(1, vocab_size) for _ in range(n - 1)])
    return prompts


@WORKLOADS.register("random", params=RandomParams)
class RandomWorkload(ClientWorkload):
    def __init__(self, params: RandomParams, **_: object) -> None:
        self.params = params

    def client_run(self, engine: "Engine") -> ClientRun:
        first = [Submission(ids, i) for i, ids in enumerate(random_prompts(self.params, engine.spec.vocab_size))]
        return drive(engine, first, self.params, desc="random")
