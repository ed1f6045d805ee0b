"""workload=router_fidelity: what a router swap costs in output quality, against the checkpoint's own routing.

Reported (workloads/fidelity.py measures them): mean KL(native || router) of
the next-token distributions, top-1 agreement, and perplexity and next-token
accuracy of both on a text file (by default the held-out text of a trained
checkpoint, else the shipped sample text), plus generation throughput
with the configured router. A batch-dependent router (expert choice) sees each
chunk whole: it is non-causal within the chunk, which the run reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moeframe.workloads import WORKLOADS
from moeframe.workloads.base import Workload
from moeframe.workloads.driver import ClientParams, Submission, client_metrics, drive
from moeframe.workloads.fidelity import measure_fidelity, scoring_text
from moeframe.workloads.prompts import PROMPTS

if TYPE_CHECKING:
    from moeframe.api import Engine


@dataclass
class RouterFidelityParams(ClientParams):
    text_path: str | None = None  # null: the checkpoint's heldout.txt, else the sample text moeframe ships
    chunk_tokens: int = 128  # tokens per teacher-forced chunk
    max_chunks: int = 16
    num_requests: int = 8  # generation requests for the throughput figure

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk_tokens < 2 or self.max_chunks < 1 or self.num_requests < 1:
            raise ValueError("chunk_tokens must be >= 2, max_chunks and num_requests >= 1")
        if self.text_path is not None and not Path(self.text_path).is_file():
            raise ValueError(f"text_path {self.text_path} is not a file")


@WORKLOADS.register("router_fidelity", params=RouterFidelityParams)
class RouterFidelity(Workload):
    def __init__(self, params: RouterFidelityParams, **_: object) -> None:
        self.params = params

    def run(self, engine: "Engine") -> dict[str, Any]:
        p = self.params
        texts = [PROMPTS[i % len(PROMPTS)] for i in range(p.num_requests)]
        run = drive(engine, [Submission(engine.encode(t), i) for i, t in enumerate(texts)], p, desc="router_fidelity")
        metrics = client_metrics(engine, run)
        text, heldout = scoring_text(engine, p.text_path)
        metrics.update(measure_fidelity(engine, text, p.chunk_tokens, p.max_chunks))
        metrics["fidelity_heldout"] = heldout
        return metrics
