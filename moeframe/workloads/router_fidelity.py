"""workload=router_fidelity: what a router swap costs in output quality, against the checkpoint's own routing.

The same weights are run twice over the same text: once with the configured
router, once with ``router=native`` (a second engine composed from the same
config, so only the routing differs). Reported: mean KL(native || router) of
the next-token distributions, top-1 agreement, and perplexity of both on a
text file (the shipped sample text by default), plus generation throughput
with the configured router. Teacher-forced chunks are scored one sequence at
a time, so a batch-dependent router (expert choice) sees exactly the chunk's
own tokens: it is non-causal within the chunk, which the run reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from moeframe.workloads import WORKLOADS
from moeframe.workloads.base import Workload
from moeframe.workloads.driver import ClientParams, Submission, client_metrics, drive
from moeframe.workloads.mixed import PROMPTS

if TYPE_CHECKING:
    from moeframe.api import Engine


@dataclass
class RouterFidelityParams(ClientParams):
    text_path: str | None = None  # null: the sample text moeframe ships
    chunk_tokens: int = 128  # tokens per teacher-forced chunk
    max_chunks: int = 8
    num_requests: int = 8  # generation requests for the throughput figure

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk_tokens < 2 or self.max_chunks < 1 or self.num_requests < 1:
            raise ValueError("chunk_tokens must be >= 2, max_chunks and num_requests >= 1")
        if self.text_path is not None and not Path(self.text_path).is_file():
            raise ValueError(f"text_path {self.text_path} is not a file")


def text_of(params: RouterFidelityParams) -> str:
    if params.text_path is not None:
        return Path(params.text_path).read_text(encoding="utf-8")
    from moeframe.data import sample_text

    return sample_text()


def fidelity(router_logits: torch.Tensor, native_logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Sums over positions: KL(native || router), top-1 agreements, and both next-token NLLs."""
    logp_router = torch.log_softmax(router_logits.float(), dim=-1)
    logp_native = torch.log_softmax(native_logits.float(), dim=-1)
    kl = (logp_native.exp() * (logp_native - logp_router)).sum(-1)
    return {
        "kl": kl.sum().item(),
        "agree": (logp_router.argmax(-1) == logp_native.argmax(-1)).sum().item(),
        "nll_router": -logp_router.gather(-1, targets[:, None]).sum().item(),
        "nll_native": -logp_native.gather(-1, targets[:, None]).sum().item(),
        "positions": targets.numel(),
    }


@WORKLOADS.register("router_fidelity", params=RouterFidelityParams)
class RouterFidelity(Workload):
    def __init__(self, params: RouterFidelityParams, **_: object) -> None:
        self.params = params

    def run(self, engine: "Engine") -> dict[str, Any]:
        p = self.params
        texts = [PROMPTS[i % len(PROMPTS)] for i in range(p.num_requests)]
        run = drive(engine, [Submission(engine.encode(t), i) for i, t in enumerate(texts)], p, desc="router_fidelity")
        metrics = client_metrics(engine, run)
        metrics.update(measure_fidelity(engine, text_of(p), p.chunk_tokens, p.max_chunks))
        return metrics


def measure_fidelity(engine: "Engine", text: str, chunk_tokens: int, max_chunks: int) -> dict[str, float]:
    """KL vs native, top-1 agreement and both perplexities over up to ``max_chunks`` chunks of ``text``."""
    native = engine.variant({"router": {"name": "native"}})
    ids = engine.encode(text)
    chunk = min(chunk_tokens, engine.built.max_context)
    totals = {"kl": 0.0, "agree": 0.0, "nll_router": 0.0, "nll_native": 0.0, "positions": 0}
    for start in range(0, min(len(ids) - 1, chunk * max_chunks), chunk):
        piece = ids[start : start + chunk + 1]
        if len(piece) < 2:
            break
        inputs, targets = piece[:-1], torch.tensor(piece[1:])
        part = fidelity(engine.score(inputs).cpu(), native.score(inputs).cpu(), targets)
        totals = {k: totals[k] + part[k] for k in totals}
    native.close()
    n = max(totals["positions"], 1)
    return {
        "kl_vs_native": totals["kl"] / n,
        "top1_agreement": totals["agree"] / n,
        "perplexity": math.exp(totals["nll_router"] / n),
        "perplexity_native": math.exp(totals["nll_native"] / n),
        "fidelity_positions": totals["positions"],
    }
