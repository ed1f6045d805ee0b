"""Roofline bounds of a decode step and a prefill, from a model's shapes.

Decode is bound by memory: a step must read every non-expert weight once
but the embedding table, of which it reads its tokens' rows (the lm_head's
matrix is read whole, tied to the embedding or not), the experts its batch
routes to (expected distinct experts of E when b tokens each pick k
uniformly: E * (1 - (1 - k/E)^b)), and each request's KV.
Prefill is bound by compute: 2 FLOPs per active parameter per token, plus
causal attention's QK^T and PV.
"""

from __future__ import annotations

from dataclasses import dataclass

from moeframe.model.causal_lm import CausalLM
from moeframe.model.spec import ModelSpec


@dataclass(frozen=True)
class ModelBytes:
    dense_params: int  # everything but routed experts: the embedding table and the lm_head's matrix each counted once
    expert_params_per_layer: int  # one routed expert's parameters
    num_sparse_layers: int
    element_size: int


def model_bytes(model: CausalLM, element_size: int) -> ModelBytes:
    spec = model.spec
    dense = sum(p.numel() for n, p in model.named_parameters() if not n.endswith((".w13", ".w2")))
    if spec.tie_word_embeddings:
        dense += model.lm_head.weight.numel()
    per_expert = 3 * spec.hidden_size * spec.moe.intermediate_size if spec.is_moe else 0
    return ModelBytes(dense, per_expert, sum(spec.sparse_layers) if spec.is_moe else 0, element_size)


def expected_experts_touched(num_experts: int, top_k: int, num_tokens: int) -> float:
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** num_tokens)


def kv_bytes_per_token(spec: ModelSpec, element_size: int) -> int:
    att = spec.attention
    return spec.num_layers * att.cache_kv_heads * (att.k_dim + att.v_dim) * element_size


def decode_step_bytes(spec: ModelSpec, sizes: ModelBytes, batch: int, context: int) -> float:
    """Bytes one decode step of ``batch`` requests of ``context`` tokens must read."""
    touched = expected_experts_touched(spec.moe.num_experts, spec.moe.top_k, batch) if spec.is_moe else 0.0
    embedding_rows_not_read = (spec.vocab_size - min(batch, spec.vocab_size)) * spec.hidden_size
    weights = sizes.dense_params - embedding_rows_not_read + touched * sizes.num_sparse_layers * sizes.expert_params_per_layer
    return weights * sizes.element_size + batch * context * kv_bytes_per_token(spec, sizes.element_size)


def active_params_per_token(spec: ModelSpec, sizes: ModelBytes) -> float:
    """Parameters a token multiplies through (embedding lookup excluded)."""
    dense = sizes.dense_params - spec.vocab_size * spec.hidden_size
    experts = spec.moe.top_k * sizes.num_sparse_layers * sizes.expert_params_per_layer if spec.is_moe else 0
    return dense + experts


def prefill_flops(spec: ModelSpec, sizes: ModelBytes, num_seqs: int, seq_len: int) -> float:
    att = spec.attention
    linear = 2.0 * active_params_per_token(spec, sizes) * num_seqs * seq_len
    attention = 2.0 * spec.num_layers * att.num_heads * (att.k_dim + att.v_dim) * num_seqs * seq_len * seq_len / 2
    return linear + attention
