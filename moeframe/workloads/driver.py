"""A closed-loop client for the cache workloads: submit, step the engine, follow up on finished requests.

Like the ``--max-concurrency`` mode of vLLM's and SGLang's serving
benchmarks, at most ``max_concurrency`` requests are in flight; a finished
request may spawn follow-ups (the next turn of a conversation, the branches
of a tree), which are submitted only once it has finished. The metrics are
request_metrics plus what the cache did during the run: evicted tokens,
preemptions and pool usage.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from moeframe.engine.request import GenerateOutput, Request
from moeframe.engine.sampling_params import SamplingParams
from moeframe.workloads.request_metrics import request_metrics
from moeframe.workloads.base import Workload

if TYPE_CHECKING:
    from moeframe.api import Engine


@dataclass
class ClientParams:
    """What every cache workload's client shares: generation length, sampling, concurrency."""

    max_new_tokens: int = 8
    temperature: float = 0.0
    seed: int = 0  # picks the texts; also seeds sampling when temperature > 0
    max_concurrency: int = 0  # requests in flight at once; 0 = no limit
    progress: bool = True  # a tqdm bar over finished requests

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_concurrency < 0:
            raise ValueError(f"max_concurrency must be >= 0 (0 = no limit), got {self.max_concurrency}")

    def sampling(self, index: int) -> SamplingParams:
        seed = self.seed + index if self.temperature > 0 else None
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=seed, ignore_eos=True)


@dataclass
class Submission:
    """One prompt to send, and a tag the follow-up callback reads (a conversation, a tree node)."""

    prompt_ids: list[int]
    tag: Any = None


FollowUp = Callable[[Request, Submission], list[Submission]]


@dataclass
class ClientRun:
    requests: list[Request] = field(default_factory=list)  # in submission order
    submissions: list[Submission] = field(default_factory=list)
    wall_s: float = 0.0
    peak_used_slots: int = 0
    evicted_tokens: int = 0
    preemptions: int = 0

    @property
    def outputs(self) -> list[GenerateOutput]:
        return [r.to_output() for r in self.requests]


def drive(
    engine: "Engine",
    first: list[Submission],
    params: ClientParams,
    follow_up: FollowUp | None = None,
    total: int | None = None,
    desc: str = "requests",
) -> ClientRun:
    """Run ``first`` and every follow-up to completion; ``total`` sizes the progress bar."""
    built = engine.built
    run = ClientRun()
    evicted0, preempted0 = built.cache.stats.evicted_tokens, built.scheduler.num_preemptions
    pending = deque(first)
    in_flight: dict[int, tuple[Request, Submission]] = {}
    limit = params.max_concurrency or None
    bar = tqdm(total=total or len(first), desc=desc, disable=not params.progress, leave=False)
    start = time.perf_counter()
    while pending or in_flight:
        while pending and (limit is None or len(in_flight) < limit):
            sub = pending.popleft()
            sampling = params.sampling(len(run.requests))
            # an engine that records routes returns them for every request (outputs.jsonl keeps them)
            sampling.return_routed_experts = engine.core.routes is not None
            req = engine.add_request(sub.prompt_ids, sampling)
            in_flight[req.rid] = (req, sub)
            run.requests.append(req)
            run.submissions.append(sub)
        engine.step()
        for req, sub in [entry for entry in in_flight.values() if entry[0].is_finished]:
            del in_flight[req.rid]
            bar.update(1)
            if follow_up is not None and req.finish_reason != "error":
                pending.extend(follow_up(req, sub))
        run.peak_used_slots = max(run.peak_used_slots, built.pool.num_slots - built.pool.num_free_slots)
    run.wall_s = time.perf_counter() - start
    bar.close()
    run.evicted_tokens = built.cache.stats.evicted_tokens - evicted0
    run.preemptions = built.scheduler.num_preemptions - preempted0
    return run


def client_metrics(engine: "Engine", run: ClientRun) -> dict[str, Any]:
    """request_metrics (throughput, TTFT, ITL, hit rate) and the cache's side of the run."""
    pool = engine.built.pool
    metrics: dict[str, Any] = request_metrics(run.requests, run.outputs, run.wall_s)
    metrics.update(
        errors=sum(r.finish_reason == "error" for r in run.requests),
        evicted_tokens=run.evicted_tokens,
        preemptions=run.preemptions,
        pool_slots=pool.num_slots,
        pool_peak_used_slots=run.peak_used_slots,
        pool_peak_usage=run.peak_used_slots / pool.num_slots,
        cached_tokens_at_end=engine.built.cache.num_cached_tokens(),
    )
    return metrics


class ClientWorkload(Workload):
    """A workload that is one closed-loop client run; ``client_run`` keeps the requests for inspection."""

    @abstractmethod
    def client_run(self, engine: "Engine") -> ClientRun:
        """Send the workload's requests and return them with the run's cache figures."""

    def run(self, engine: "Engine") -> dict[str, Any]:
        return client_metrics(engine, self.client_run(engine))
