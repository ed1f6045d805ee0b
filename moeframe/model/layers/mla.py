"""DeepSeek's multi-head latent attention (DeepSeek-V2, section 2.1), with two KV layouts (``runner.mla_cache``).

``decompressed``: keys and values cached per head ([slot, heads, nope+rope]
and [slot, heads, v]), so MLA runs on the same slot-indexed attention as
every other family. ``latent``: the layout the paper designs for, and
SGLang's and vLLM's MLA backends use: each token caches its normalized
latent and its rotary key ([slot, 1, kv_lora + rope]), and kv_b_proj's two
halves are absorbed, W_UK into the query (q_nope W_UK scores the latent as
k_nope would) and W_UV into the output (attention over the latent, then
W_UV). Every head then attends to one shared KV "head" (multi-query), the
values being the keys' latent part, so KV memory per token drops by
heads * (nope + rope + v) / (kv_lora + rope); the math is the same.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dataclasses import replace

from moeframe.errors import ConfigError
from moeframe.model.layers.context import ForwardContext
from moeframe.model.layers.norm import RMSNorm
from moeframe.model.layers.rotary import Rotary
from moeframe.model.layers.small_gemv import project
from moeframe.model.spec import AttentionSpec, ModelSpec

MLA_CACHES = ("decompressed", "latent")


def with_mla_cache(spec: ModelSpec, layout: str) -> ModelSpec:
    """``spec`` with MLA's KV layout set to ``layout`` (runner.mla_cache); other attention is left as is."""
    if layout not in MLA_CACHES:
        raise ConfigError(f"runner.mla_cache: unknown choice '{layout}'; valid choices: {', '.join(MLA_CACHES)}")
    mla = spec.attention.mla
    if mla is None:
        return spec
    return replace(spec, attention=replace(spec.attention, mla=replace(mla, latent_cache=layout == "latent")))


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
            q = project(self.q_proj, x)
        else:
            q = project(self.q_b_proj, self.q_a_layernorm(project(self.q_a_proj, x)))
        q = q.view(n, heads, mla.qk_nope_head_dim + mla.qk_rope_head_dim)
        q_nope, q_rot = q.split([mla.qk_nope_head_dim, mla.qk_rope_head_dim], dim=-1)
        latent, k_rot = project(self.kv_a_proj_with_mqa, x).split([mla.kv_lora_rank, mla.qk_rope_head_dim], dim=-1)
        kv = project(self.kv_b_proj, self.kv_a_layernorm(latent)).view(n, heads, mla.qk_nope_head_dim + mla.v_head_dim)
        k_nope, v = kv.split([mla.qk_nope_head_dim, mla.v_head_dim], dim=-1)
        cos, sin = self.rotary.cos_sin(positions, q.dtype)
        q_rot = self.rotary.apply(q_rot, cos, sin)
        k_rot = self.rotary.apply(k_rot.view(n, 1, mla.qk_rope_head_dim), cos, sin)
        if mla.latent_cache:
            return self._attend_latent(q_nope, q_rot, self.kv_a_layernorm(latent), k_rot, ctx)
        k_rot = k_rot.expand(n, heads, -1)
        q = torch.cat([q_nope, q_rot], dim=-1)
        k = torch.cat([k_nope, k_rot], dim=-1)
        k_cache, v_cache = ctx.k_cache[self.layer_idx], ctx.v_cache[self.layer_idx]
        k_cache[ctx.batch.out_slots] = k.to(k_cache.dtype)
        v_cache[ctx.batch.out_slots] = v.to(v_cache.dtype)
        out = ctx.attend(q, k_cache, v_cache, ctx.batch, self.scale)
        return project(self.o_proj, out.reshape(n, -1))

    def _attend_latent(
        self, q_nope: torch.Tensor, q_rot: torch.Tensor, latent: torch.Tensor, k_rot: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        """Attention over the cached [latent; rotary key] of each token, kv_b_proj absorbed (module docstring)."""
        mla, n, heads = self.mla, q_nope.shape[0], q_nope.shape[1]
        w_kv_b = self.kv_b_proj.weight.view(heads, mla.qk_nope_head_dim + mla.v_head_dim, mla.kv_lora_rank)
        w_uk, w_uv = w_kv_b.split([mla.qk_nope_head_dim, mla.v_head_dim], dim=1)
        q = torch.cat([torch.einsum("nhd,hdr->nhr", q_nope, w_uk), q_rot], dim=-1)
        k_cache = ctx.k_cache[self.layer_idx]
        k_cache[ctx.batch.out_slots] = torch.cat([latent.view(n, 1, -1), k_rot], dim=-1).to(k_cache.dtype)
        out = ctx.attend(q, k_cache, k_cache[..., : mla.kv_lora_rank], ctx.batch, self.scale)
        return project(self.o_proj, torch.einsum("nhr,hvr->nhv", out, w_uv).reshape(n, -1))
