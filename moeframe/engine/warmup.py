"""Warm-up at engine build: run the request shapes a server will see before the first request comes.

On CUDA, Triton compiles a kernel variant on its first launch (one per
constexpr tile config: the fused MoE picks tiles by token count, attention
by whether a prefix is cached), torch.compile traces its fused regions on
the first shapes it meets, and cuBLAS picks algorithms per shape. Left to
the first requests, that work stalled them 3-4x (issue 25). vLLM pays it in
``profile_run`` and graph capture, SGLang with a warm-up request at server
start; this runs a small set of synthetic requests through the engine's own
step loop, so every path a served request takes (prefill at each
power-of-two token count up to the step budget, a cached-prefix extend,
decode at each captured batch size, greedy, sampled and log-probability rows)
has run once. Afterwards the cache, the counters and the expert-load
recorder are reset: warm-up tokens count in no figure.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import torch
from tqdm import tqdm

from moeframe.engine.core import EngineCore, StepStats
from moeframe.engine.request import Request
from moeframe.engine.sampling_params import SamplingParams

WARMUP_RID_BASE = -(10**9)  # warm-up requests take ids no real request has


def warmup_batches(
    batch_sizes: list[int], max_batch_tokens: int, vocab_size: int, max_context: int
) -> Iterator[list[tuple[list[int], SamplingParams]]]:
    """The synthetic batches, each a list of (prompt ids, params) that run together."""
    gen = torch.Generator().manual_seed(0)

    def prompt(length: int) -> list[int]:
        return torch.randint(1, vocab_size, (min(length, max_context - 4),), generator=gen).tolist()

    greedy = SamplingParams(max_new_tokens=3, ignore_eos=True)
    sampled = SamplingParams(max_new_tokens=3, ignore_eos=True, temperature=0.8, top_p=0.9, top_k=20, seed=0)
    scored = SamplingParams(max_new_tokens=2, ignore_eos=True, logprobs=2)
    length = 1
    while length <= max_batch_tokens:  # one prefill of each power-of-two token count
        yield [(prompt(length), SamplingParams(max_new_tokens=1, ignore_eos=True))]
        length *= 2
    shared = prompt(48)
    yield [(shared + prompt(5), greedy)]
    yield [(shared + prompt(9), greedy)]  # extends a cached prefix
    for size in sorted(set(batch_sizes)):  # decode at each captured size, mixed rows
        rows = [greedy, sampled, scored]
        yield [(prompt(8 + i % 7), rows[i % 3]) for i in range(size)]


def warm_up(core: EngineCore, batch_sizes: list[int], max_batch_tokens: int, vocab_size: int, max_context: int) -> float:
    """Run the warm-up batches through ``core`` (which must be idle) and return the seconds it took."""
    start = time.perf_counter()
    rids = itertools.count(WARMUP_RID_BASE)
    added: list[int] = []
    batches = list(warmup_batches(batch_sizes, max_batch_tokens, vocab_size, max_context))
    for batch in tqdm(batches, desc="warm-up", unit="batch", leave=False):
        for ids, params in batch:
            req = Request(rid=next(rids), prompt_ids=ids, params=params)
            if params.seed is not None:
                req.generator = torch.Generator().manual_seed(params.seed)
            core.add(req)
            added.append(req.rid)
        while core.has_work():
            core.step()
    for rid in added:
        core.requests.pop(rid, None)
    if core.runner.device.type == "cuda":
        torch.cuda.synchronize(core.runner.device)
    core.stats = StepStats()
    core.scheduler.num_preemptions = 0
    return time.perf_counter() - start
