"""workload=mixed: a small batch of prompts of mixed lengths (the default run's smoke workload)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moeframe.workloads import WORKLOADS
from moeframe.workloads.driver import ClientParams, ClientRun, ClientWorkload, Submission, drive
from moeframe.workloads.fidelity import measure_fidelity, scoring_text
from moeframe.workloads.prompts import PROMPTS

if TYPE_CHECKING:
    from moeframe.api import Engine


@dataclass
class MixedParams(ClientParams):
    num_requests: int = 16
    max_new_tokens: int = 32
    fidelity_chunks: int = 4  # chunks of held-out (else sample) text scored against native routing (0: skip)
    fidelity_chunk_tokens: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")
        if self.fidelity_chunks < 0 or self.fidelity_chunk_tokens < 2:
            raise ValueError("fidelity_chunks must be >= 0 and fidelity_chunk_tokens >= 2")


@WORKLOADS.register("mixed", params=MixedParams)
class MixedWorkload(ClientWorkload):
    def __init__(self, params: MixedParams, **_: object) -> None:
        self.params = params

    def client_run(self, engine: "Engine") -> ClientRun:
        texts = [PROMPTS[i % len(PROMPTS)] for i in range(self.params.num_requests)]
        return drive(engine, [Submission(engine.encode(t), i) for i, t in enumerate(texts)], self.params, desc="mixed")

    def run(self, engine: "Engine") -> dict[str, Any]:
        """The client run's figures, plus routing fidelity against native so any router sweep can be compared."""
        metrics = super().run(engine)
        p = self.params
        if p.fidelity_chunks and engine.spec.is_moe and engine.tokenizer is not None:
            text, heldout = scoring_text(engine, None)
            metrics.update(measure_fidelity(engine, text, p.fidelity_chunk_tokens, p.fidelity_chunks))
            metrics["fidelity_heldout"] = heldout
        return metrics
