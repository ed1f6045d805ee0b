"""Routing fidelity against the checkpoint's own routing: KL, top-1 agreement, both perplexities.

The same weights are run twice over the same text: once with the configured
router and routing axes, once with ``router=native`` and the axes off (a second
engine from the same config via ``Engine.variant``, so only the routing differs). Teacher-forced chunks are
scored one sequence at a time, so a batch-dependent router (expert choice)
sees exactly the chunk's own tokens. Shared by the router_fidelity and mixed
workloads.

The text is, unless a workload names one, the held-out text a trained
checkpoint ships (``heldout.txt``: files of its corpus it never trained on,
see moeframe/training/corpus.py), so perplexity and next-token accuracy say
how well the model predicts unseen text; a checkpoint without one (random
weights) is scored on moeframe's sample text, and ``fidelity_heldout`` says
which was used.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import OmegaConf

from moeframe.config import RoutingConfig

if TYPE_CHECKING:
    from moeframe.api import Engine

NATIVE = {"name": "native"}


HELDOUT_TEXT = "heldout.txt"


def scoring_text(engine: "Engine", text_path: str | None) -> tuple[str, bool]:
    """(text, whether it is the checkpoint's held-out text): ``text_path``, else heldout.txt, else the sample text."""
    if text_path is not None:
        return Path(text_path).read_text(encoding="utf-8"), False
    checkpoint = engine.built.checkpoint
    if checkpoint is not None and (checkpoint / HELDOUT_TEXT).is_file():
        return (checkpoint / HELDOUT_TEXT).read_text(encoding="utf-8"), True
    from moeframe.data import sample_text

    return sample_text(), False


def fidelity(router_logits: torch.Tensor, native_logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Sums over positions: KL(native || router), top-1 agreements, both next-token NLLs and correct guesses."""
    logp_router = torch.log_softmax(router_logits.float(), dim=-1)
    logp_native = torch.log_softmax(native_logits.float(), dim=-1)
    kl = (logp_native.exp() * (logp_native - logp_router)).sum(-1)
    return {
        "kl": kl.sum().item(),
        "agree": (logp_router.argmax(-1) == logp_native.argmax(-1)).sum().item(),
        "nll_router": -logp_router.gather(-1, targets[:, None]).sum().item(),
        "nll_native": -logp_native.gather(-1, targets[:, None]).sum().item(),
        "correct_router": (logp_router.argmax(-1) == targets).sum().item(),
        "correct_native": (logp_native.argmax(-1) == targets).sum().item(),
        "positions": targets.numel(),
    }


def measure_fidelity(engine: "Engine", text: str, chunk_tokens: int, max_chunks: int) -> dict[str, float]:
    """KL vs native, top-1 agreement, both perplexities and next-token accuracies over up to ``max_chunks`` chunks.

    An engine that already routes natively with every routing axis off is its
    own baseline: no second engine (a real-shape model and its KV pool would
    not fit twice on one GPU).
    """
    # native routing with every routing axis off (no temperature, skipping or pruning)
    baseline = {"router": NATIVE, "routing": asdict(RoutingConfig())}
    already_native = all(OmegaConf.to_container(engine.cfg[key], resolve=True) == value for key, value in baseline.items())
    # the baseline only scores (prefill-shaped forwards): no decode graphs to capture, no warm-up to pay for
    native = engine if already_native else engine.variant({**baseline, "runner.warmup": False, "runner.cuda_graph": False})
    ids = engine.encode(text)
    chunk = min(chunk_tokens, engine.built.max_context)
    totals = dict.fromkeys(("kl", "agree", "nll_router", "nll_native", "correct_router", "correct_native", "positions"), 0.0)
    for start in range(0, min(len(ids) - 1, chunk * max_chunks), chunk):
        piece = ids[start : start + chunk + 1]
        if len(piece) < 2:
            break
        inputs, targets = piece[:-1], torch.tensor(piece[1:])
        logits = engine.score(inputs).cpu()
        part = fidelity(logits, logits if already_native else native.score(inputs).cpu(), targets)
        totals = {k: totals[k] + part[k] for k in totals}
    if not already_native:
        native.close()
    n = max(totals["positions"], 1)
    return {
        "kl_vs_native": totals["kl"] / n,
        "top1_agreement": totals["agree"] / n,
        "perplexity": math.exp(totals["nll_router"] / n),
        "perplexity_native": math.exp(totals["nll_native"] / n),
        "next_token_accuracy": totals["correct_router"] / n,
        "next_token_accuracy_native": totals["correct_native"] / n,
        "fidelity_positions": int(totals["positions"]),
    }
