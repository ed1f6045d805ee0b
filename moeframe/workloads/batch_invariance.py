"""workload=batch_invariance: the same prompts alone and inside mixed batches, their tokens and logprobs compared.

The check SGLang (``--enable-deterministic-inference``) and vLLM
(``VLLM_BATCH_INVARIANT``) run on their deterministic modes: every prompt is
generated greedily on its own (an empty cache, no batch-mate), then inside
mixed batches, each with other companions, batch sizes, prompt orders and
generation lengths, so requests join and leave the batch at different steps;
prompts share prefixes, so later runs take radix-cache hits computed by
other requests. Reported: the share of prompts whose tokens differ from
their lone run in some batch, the largest difference of a chosen token's
logprob, and ``batch_invariant`` when both are zero (bitwise).

A router is batch-invariant when this holds for it on an engine that is
itself invariant (``deterministic=true``): its label is this measurement,
not a flag the router sets.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moeframe.engine.sampling_params import SamplingParams
from moeframe.workloads import WORKLOADS
from moeframe.workloads.base import Workload

if TYPE_CHECKING:
    from moeframe.api import Engine


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    max_new_tokens: int


def invariance_prompts(vocab_size: int, num_prompts: int, max_new_tokens: int, seed: int) -> list[Prompt]:
    """``num_prompts`` prompts of 4-40 random token ids, in groups of four sharing a prefix of 4-24 ids."""
    rng = random.Random(seed)
    prompts = []
    prefix: list[int] = []
    for i in range(num_prompts):
        if i % 4 == 0:
            prefix = [rng.randrange(1, vocab_size) for _ in range(rng.randint(4, 24))]
        tail = [rng.randrange(1, vocab_size) for _ in range(rng.randint(0, 16))]
        prompts.append(Prompt(prefix + tail, max_new_tokens))
    return prompts


def companions(vocab_size: int, count: int, rng: random.Random) -> list[Prompt]:
    """Batch-mates that are measured by nobody: 2-120 ids, 1-12 new tokens, so the batch changes as they finish."""
    return [
        Prompt([rng.randrange(1, vocab_size) for _ in range(rng.randint(2, 120))], rng.randint(1, 12))
        for _ in range(count)
    ]


def mixed_batches(prompts: list[Prompt], vocab_size: int, seed: int) -> list[list[tuple[int | None, Prompt]]]:
    """Three batch plans: (index of the measured prompt or None for a companion, prompt) per request, in order.

    1. every prompt at once, shuffled, with 8 companions;
    2. batches of 5 prompts in reverse order, each with 3 companions sent first;
    3. batches of 11 prompts interleaved with as many companions.
    """
    rng = random.Random(seed)
    measured = list(enumerate(prompts))
    first = measured[:]
    rng.shuffle(first)
    plans: list[list[tuple[int | None, Prompt]]] = [[(None, c) for c in companions(vocab_size, 8, rng)] + first]
    for group, mates in ((5, 3), (11, 11)):
        order = measured[::-1] if group == 5 else measured
        for start in range(0, len(order), group):
            chunk = order[start : start + group]
            extra = [(None, c) for c in companions(vocab_size, mates, rng)]
            if group == 5:
                plans.append(extra + chunk)
            else:
                plans.append([r for pair in zip(chunk, extra) for r in pair] + extra[len(chunk) :])
    return plans


def run_batch(engine: "Engine", batch: list[tuple[int | None, Prompt]]) -> dict[int, tuple[list[int], list[float]]]:
    """Generate one batch greedily; the measured prompts' (token ids, chosen-token logprobs)."""
    params = [SamplingParams(max_new_tokens=p.max_new_tokens, ignore_eos=True, logprobs=0) for _, p in batch]
    outputs = engine.generate([p.ids for _, p in batch], params)
    return {
        index: (out.token_ids, [entry["logprob"] for entry in out.logprobs or []])
        for (index, _), out in zip(batch, outputs)
        if index is not None
    }


def measure_batch_invariance(
    engine: "Engine", num_prompts: int = 32, max_new_tokens: int = 8, seed: int = 0
) -> dict[str, float | bool]:
    """Each prompt alone (empty cache), then in the mixed batches; how far the batched runs stray from the lone ones."""
    vocab_size = engine.spec.vocab_size
    prompts = invariance_prompts(vocab_size, num_prompts, max_new_tokens, seed)
    alone = {}
    for i, prompt in enumerate(prompts):
        engine.built.cache.clear()
        alone.update(run_batch(engine, [(i, prompt)]))
    differing: set[int] = set()
    max_logprob_diff = 0.0
    for batch in mixed_batches(prompts, vocab_size, seed):
        for index, (tokens, logprobs) in run_batch(engine, batch).items():
            lone_tokens, lone_logprobs = alone[index]
            if tokens != lone_tokens:
                differing.add(index)
            common = min(len(logprobs), len(lone_logprobs))
            diffs = [abs(a - b) for a, b in zip(logprobs[:common], lone_logprobs[:common])]
            max_logprob_diff = max(max_logprob_diff, *diffs, 0.0)
    return {
        "batch_invariance_differing_share": len(differing) / len(prompts),
        "batch_invariance_max_logprob_diff": max_logprob_diff,
        "batch_invariant": not differing and max_logprob_diff == 0.0,
    }


@dataclass
class BatchInvarianceParams:
    num_prompts: int = 32
    max_new_tokens: int = 8
    seed: int = 0  # picks the prompts, companions and batch orders

    def __post_init__(self) -> None:
        if self.num_prompts < 1 or self.max_new_tokens < 1:
            raise ValueError("num_prompts and max_new_tokens must be >= 1")


@WORKLOADS.register("batch_invariance", params=BatchInvarianceParams)
class BatchInvariance(Workload):
    def __init__(self, params: BatchInvarianceParams, **_: object) -> None:
        self.params = params

    def run(self, engine: "Engine") -> dict[str, Any]:
        p = self.params
        start = time.perf_counter()
        metrics: dict[str, Any] = dict(measure_batch_invariance(engine, p.num_prompts, p.max_new_tokens, p.seed))
        return metrics | {"wall_s": time.perf_counter() - start, "deterministic": bool(engine.cfg.deterministic)}
