"""Expert pruning: a calibration pass ranks each MoE layer's experts, the best n stay, the rest's weights go.

The calibration pass routes ``routing.calibration_tokens`` tokens of a text
through the full model, with each layer's expert kernel wrapped in a
``CalibrationMeter`` that scores the experts of every plan it runs:
- ``frequency``: how many tokens the router sent to the expert (the
  count-based pruning most MoE compression work starts from);
- ``reap`` (Lasby et al., 2025, "REAP: Router-weighted Expert Activation
  Pruning", arXiv 2510.13999): the mean, over the tokens routed to the
  expert, of its router weight times the L2 norm of its output, so an expert
  that is often chosen but contributes little ranks low.
Each layer then keeps its n best experts: the stacked weights are cut to
them (the others are freed, so ``expert_weight_bytes`` shrinks by (E - n) / E),
the router masks the pruned experts' logits to -inf (routers/adjust.py), and
the block maps kept expert ids to rows of the cut weights. Loading first and
freeing after is what a one-shot calibration needs; the ranking is the
pruning's whole state.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from moeframe.attention.batch import ForwardBatch
from moeframe.cache.base import KVCache
from moeframe.cache.pool import KVPool
from moeframe.errors import ConfigError
from moeframe.experts.base import ExpertsKernel
from moeframe.model.causal_lm import CausalLM
from moeframe.model.layers.moe import MoEBlock
from moeframe.model.spec import ModelSpec
from moeframe.routers.adjust import AdjustedRouter
from moeframe.routers.plan import RoutingPlan

PRUNE_METHODS = ("frequency", "reap")
CALIBRATION_CHUNK_TOKENS = 256


class CalibrationMeter(ExpertsKernel):
    """A layer's kernel during calibration: the kernel's output, and each routed expert scored on the way."""

    def __init__(self, kernel: ExpertsKernel, num_experts: int) -> None:
        self.kernel = kernel
        self.tokens = torch.zeros(num_experts, dtype=torch.float64)
        self.weighted_norm = torch.zeros(num_experts, dtype=torch.float64)

    def forward(self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
        for expert in torch.unique(plan.topk_ids[plan.kept]).tolist():
            token_idx, col = torch.nonzero(plan.topk_ids == expert, as_tuple=True)
            gate, up = F.linear(hidden[token_idx], w13[expert]).chunk(2, dim=-1)
            out_norm = F.linear(F.silu(gate) * up, w2[expert]).float().norm(dim=-1)
            self.tokens[expert] += token_idx.numel()
            self.weighted_norm[expert] += (plan.topk_weights[token_idx, col].float() * out_norm).sum().item()
        return self.kernel.forward(hidden, w13, w2, plan)

    def scores(self, method: str) -> torch.Tensor:
        """[E] float64, higher = keep; an expert no token reached scores 0 either way."""
        if method == "frequency":
            return self.tokens
        return self.weighted_norm / self.tokens.clamp_min(1)


def moe_blocks(model: CausalLM) -> list[MoEBlock]:
    return [layer.mlp for layer in model.layers if layer.is_sparse]  # a pipeline rank's other layers are placeholders, never sparse


@torch.inference_mode()
def calibrate(
    model: CausalLM, cache: KVCache, pool: KVPool, forward, token_ids: list[int], method: str
) -> dict[int, torch.Tensor]:
    """Each MoE layer's expert scores [E] (by ``method``) over ``token_ids``, routed in chunks of one sequence.

    ``forward``: ForwardBatch -> logits (the model runner's eager forward).
    """
    if method not in PRUNE_METHODS:
        raise ValueError(f"routing.prune_by='{method}': valid choices are {', '.join(PRUNE_METHODS)}")
    blocks = moe_blocks(model)
    meters = {block.layer_idx: CalibrationMeter(block.kernel, block.spec.num_experts) for block in blocks}
    kernels = {block.layer_idx: block.kernel for block in blocks}
    device = pool.k[0].device
    try:
        for block in blocks:
            block.kernel = meters[block.layer_idx]
        for start in range(0, len(token_ids), CALIBRATION_CHUNK_TOKENS):
            chunk = token_ids[start : start + CALIBRATION_CHUNK_TOKENS]
            slots = cache.allocate([], len(chunk))
            if slots is None:
                raise ValueError(f"the KV pool cannot hold a calibration chunk of {len(chunk)} tokens")
            try:
                forward(ForwardBatch.build([chunk], [slots], device))
            finally:
                pool.free(slots)
    finally:
        for block in blocks:
            block.kernel = kernels[block.layer_idx]
    return {layer: meter.scores(method) for layer, meter in meters.items()}


def keep_best(scores: torch.Tensor, num_kept: int) -> torch.Tensor:
    """The ids of the ``num_kept`` best-scoring experts, ascending; ties go to the lower id."""
    order = sorted(range(scores.numel()), key=lambda e: (-float(scores[e]), e))
    return torch.tensor(sorted(order[:num_kept]), dtype=torch.int64)


def prune(model: CausalLM, scores: dict[int, torch.Tensor], num_kept: int) -> dict[int, list[int]]:
    """Cut every MoE layer to its ``num_kept`` best experts; returns the kept ids per layer."""
    kept_ids = {}
    for block in moe_blocks(model):
        if not isinstance(block.router, AdjustedRouter):
            raise ValueError("expert pruning needs each layer's router wrapped by routers.adjust (build with pruned=True)")
        kept = keep_best(scores[block.layer_idx], num_kept)
        block.keep_experts(kept.to(block.w13.device))
        block.router.keep_only(kept.to(block.w13.device), block.spec.num_experts)
        kept_ids[block.layer_idx] = kept.tolist()
    return kept_ids


def expert_weight_bytes(model: CausalLM) -> int:
    """Bytes of the routed experts' stacked weights (w13 and w2) over every MoE layer."""
    return sum(t.numel() * t.element_size() for block in moe_blocks(model) for t in (block.w13, block.w2))


def check_pruning(num_kept: int, method: str, spec: ModelSpec, parallel: str) -> None:
    """Refuse a pruning the model or the parallel strategy cannot take, before any weight is read."""
    if not spec.is_moe:
        raise ConfigError("routing.prune_experts: the model has no MoE layers to prune")
    if not 1 <= num_kept <= spec.moe.num_experts:
        raise ConfigError(f"routing.prune_experts={num_kept}: must lie in 1..{spec.moe.num_experts} (the experts per layer)")
    if num_kept < spec.moe.top_k:
        raise ConfigError(f"routing.prune_experts={num_kept}: fewer than the router's top_k={spec.moe.top_k} experts")
    if method not in PRUNE_METHODS:
        raise ConfigError(f"routing.prune_by: unknown choice '{method}'; valid choices: {', '.join(PRUNE_METHODS)}")
    if parallel != "single":
        raise ConfigError(f"routing.prune_experts: runs with parallel=single only (got parallel={parallel})")


def calibration_token_ids(checkpoint: Path | None, text_path: str | None, num_tokens: int) -> list[int]:
    """The last ``num_tokens`` tokens of the calibration text (the shipped sample text when None).

    The last ones, because router_fidelity scores the same default text from
    its start: calibration and evaluation then read different tokens.
    """
    if checkpoint is None or not (checkpoint / "tokenizer.json").is_file():
        raise ConfigError("routing.prune_experts: the calibration pass needs the checkpoint's tokenizer.json")
    if num_tokens < 1:
        raise ConfigError(f"routing.calibration_tokens={num_tokens}: must be >= 1")
    if text_path is None:
        from moeframe.data import sample_text

        text = sample_text()
    elif Path(text_path).is_file():
        text = Path(text_path).read_text(encoding="utf-8")
    else:
        raise ConfigError(f"routing.calibration_text={text_path}: not a file")
    ids = Tokenizer.from_file(str(checkpoint / "tokenizer.json")).encode(text).ids
    return ids[-num_tokens:]
