"""workload=mixed: a small batch of prompts of mixed lengths (the default run's smoke workload)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moeframe.engine.sampling_params import SamplingParams
from moeframe.telemetry.metrics import request_metrics
from moeframe.workloads import WORKLOADS
from moeframe.workloads.base import Workload

if TYPE_CHECKING:
    from moeframe.api import Engine

PROMPTS = [
    "The quick brown fox",
    "In a distant galaxy, a small crew of engineers discovered that",
    "def fibonacci(n):",
    "Mixture-of-experts models route each token to",
    "Once upon a time",
    "The capital of France is",
    "Here is a list of prime numbers: 2, 3, 5, 7,",
    "A cache keeps recently used data close to",
]


@dataclass
class MixedParams:
    num_requests: int = 16
    max_new_tokens: int = 32
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if self.num_requests < 1 or self.max_new_tokens < 1:
            raise ValueError("num_requests and max_new_tokens must be >= 1")


@WORKLOADS.register("mixed", params=MixedParams)
class MixedWorkload(Workload):
    def __init__(self, params: MixedParams, **_: object) -> None:
        self.params = params

    def run(self, engine: "Engine") -> dict[str, Any]:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(self.params.num_requests)]
        sampling = SamplingParams(max_new_tokens=self.params.max_new_tokens, temperature=self.params.temperature, ignore_eos=True)
        start = time.perf_counter()
        requests, outputs = engine.generate_requests(prompts, sampling)
        return request_metrics(requests, outputs, time.perf_counter() - start)
