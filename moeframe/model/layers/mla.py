"""DeepSeek's multi-head latent attention (DeepSeek-V2, section 2.1).

KV is cached decompressed, per head ([slot, heads, nope+rope] keys and
[slot, heads, v] values), so MLA runs on the same slot-indexed attention as
every other family. Caching the compressed latent instead, as SGLang's MLA
backends do, would cut KV memory by about heads*(k+v)/(kv_lora+rope); it is
a separate attention backend, not a model change.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from moeframe.model.layers.context import ForwardContext
from moeframe.model.layers.norm import RMSNorm
from moeframe.model.layers.rotary import Rotary
from moeframe.model.spec import AttentionSpec


def yarn_softmax_scale(base_scale: float, rope_scaling: dict | None) -> float:
    """YaRN's attention-temperature correction, applied to MLA's softmax scale (mscale squared)."""
    scaling = rope_scaling or {}
    if scaling.get("rope_type", scaling.get("type", "default")) == "default":
        return base_scale
    mscale_all_dim = scaling.get("mscale_all_dim", 0)
    factor = scaling.get("factor", 1.0)
    if not mscale_all_dim or factor <= 1:
        return base_scale
    mscale = 0.1 * mscale_all_dim * math.log(factor) + 1.0
    return base_scale * mscale * mscale


class MultiLatentAttention(nn.Module):
    def __init__(
        self, spec: AttentionSpec, hidden_size: int, eps: float, rotary: Rotary, layer_idx: int, rope_scaling: dict | None
    ) -> None:
        super().__init__()
        mla = spec.mla
        assert mla is not None
        self.spec, self.mla, self.rotary, self.layer_idx = spec, mla, rotary, layer_idx
        heads, qk_dim = spec.num_heads, mla.qk_nope_head_dim + mla.qk_rope_head_dim
        if mla.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden_size, heads * qk_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden_size, mla.q_lora_rank, bias=spec.qkv_bias)
            self.q_a_layernorm = RMSNorm(mla.q_lora_rank, eps)
            self.q_b_proj = nn.Linear(mla.q_lora_rank, heads * qk_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden_size, mla.kv_lora_rank + mla.qk_rope_head_dim, bias=spec.qkv_bias)
        self.kv_a_layernorm = RMSNorm(mla.kv_lora_rank, eps)
        self.kv_b_proj = nn.Linear(mla.kv_lora_rank, heads * (mla.qk_nope_head_dim + mla.v_head_dim), bias=False)
        self.o_proj = nn.Linear(heads * mla.v_head_dim, hidden_size, bias=spec.out_bias)
        self.scale = yarn_softmax_scale(qk_dim**-0.5, rope_scaling)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        mla, n, heads = self.mla, x.shape[0], self.spec.num_heads
        if mla.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(n, heads, mla.qk_nope_head_dim + mla.qk_rope_head_dim)
        q_nope, q_rot = q.split([mla.qk_nope_head_dim, mla.qk_rope_head_dim], dim=-1)
        latent, k_rot = self.kv_a_proj_with_mqa(x).split([mla.kv_lora_rank, mla.qk_rope_head_dim], dim=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(latent)).view(n, heads, mla.qk_nope_head_dim + mla.v_head_dim)
        k_nope, v = kv.split([mla.qk_nope_head_dim, mla.v_head_dim], dim=-1)
        cos, sin = self.rotary.cos_sin(positions, q.dtype)
        q_rot = self.rotary.apply(q_rot, cos, sin)
        k_rot = self.rotary.apply(k_rot.view(n, 1, mla.qk_rope_head_dim), cos, sin).expand(n, heads, -1)
        q = torch.cat([q_nope, q_rot], dim=-1)
        k = torch.cat([k_nope, k_rot], dim=-1)
        k_cache, v_cache = ctx.k_cache[self.layer_idx], ctx.v_cache[self.layer_idx]
        k_cache[ctx.batch.out_slots] = k.to(k_cache.dtype)
        v_cache[ctx.batch.out_slots] = v.to(v_cache.dtype)
        out = ctx.attend(q, k_cache, v_cache, ctx.batch, self.scale)
        return self.o_proj(out.reshape(n, -1))
