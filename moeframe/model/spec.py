"""Architecture-neutral description of a checkpoint, parsed once from config.json.

Per-family differences live here as data (which norm, which routing, which
layers are sparse) so the layers in ``moeframe/model/layers`` are shared by
every family, as torchtitan keeps its model specs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class MoESpec:
    """The checkpoint's own routing and expert shapes ("native" routing follows it exactly).

    order: "softmax_topk" (Qwen, OLMoE, Mixtral: softmax over all experts, then
    top-k) or "sigmoid_group" (DeepSeek-V3: sigmoid scores, a correction bias
    used only for choosing, group-limited top-k, routed scaling). With
    n_group > 1 the top-k is group-limited whatever the scoring; a group scores
    the sum of its two best experts (V3) or its best one (DeepSeek-V2's
    group_limited_greedy): ``group_score``.
    """

    num_experts: int
    top_k: int
    intermediate_size: int
    scoring: Literal["softmax", "sigmoid"] = "softmax"
    norm_topk_prob: bool = False
    n_group: int = 1
    topk_group: int = 1
    group_score: Literal["top2_sum", "max"] = "top2_sum"
    routed_scaling_factor: float = 1.0
    has_correction_bias: bool = False
    shared_intermediate_size: int = 0
    shared_expert_gate: bool = False


@dataclass(frozen=True)
class MLASpec:
    """DeepSeek's multi-head latent attention (DeepSeek-V2 paper, section 2.1)."""

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    rope_interleave: bool = True
    # cache each token's compressed latent and rotary key (kv_lora_rank + qk_rope_head_dim values, one "head")
    # and absorb kv_b_proj into the query and output, instead of per-head decompressed keys and values
    latent_cache: bool = False


@dataclass(frozen=True)
class AttentionSpec:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    qkv_bias: bool = False
    out_bias: bool = False
    # "none"; "per_head": RMSNorm over head_dim (Qwen3); "full": RMSNorm over all heads (OLMoE)
    qk_norm: Literal["none", "per_head", "full"] = "none"
    clip_qkv: float | None = None
    mla: MLASpec | None = None

    @property
    def k_dim(self) -> int:
        """Width of a cached key (with MLA's latent cache: the latent and the rotary key)."""
        if self.mla is None:
            return self.head_dim
        if self.mla.latent_cache:
            return self.mla.kv_lora_rank + self.mla.qk_rope_head_dim
        return self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim

    @property
    def v_dim(self) -> int:
        """Width of a cached value (0 with MLA's latent cache: the values are the keys' latent part)."""
        if self.mla is None:
            return self.head_dim
        return 0 if self.mla.latent_cache else self.mla.v_head_dim

    @property
    def cache_kv_heads(self) -> int:
        if self.mla is None:
            return self.num_kv_heads
        return 1 if self.mla.latent_cache else self.num_heads


@dataclass(frozen=True)
class RopeSpec:
    theta: float
    rotary_dim: int
    scaling: dict | None = None
    interleave: bool = False


@dataclass(frozen=True)
class ModelSpec:
    architecture: str
    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    mlp_bias: bool
    attention: AttentionSpec
    rope: RopeSpec
    moe: MoESpec | None = None
    # sparse_layers[i] is True where layer i has an MoE block instead of a dense MLP
    sparse_layers: tuple[bool, ...] = field(default_factory=tuple)
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None

    @property
    def is_moe(self) -> bool:
        return self.moe is not None and any(self.sparse_layers)
