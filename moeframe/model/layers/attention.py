"""Multi-head / grouped-query attention that reads and writes the KV pool by slot.

One module serves Llama, Qwen2, Mixtral, Qwen-MoE and OLMoE; their
differences (qkv bias, q/k norms per head or over all heads, clipping) are
AttentionSpec fields.

q, k and v come from one fused projection (``qkv_proj``: q rows, then k,
then v), as vLLM's QKVParallelLinear and SGLang do, so a decode step runs one
GEMV per layer instead of three; its output is split into views, not copied.
The loader concatenates a checkpoint's separate q/k/v tensors into it.

Both projections go through small_gemv.py: cuBLAS by default, Triton GEMVs
launched with PDL at decode sizes on CUDA under ``runner.decode_gemv``, where
``project_qkv`` can fold the layer's input residual add and RMSNorm into the
qkv GEMV: one launch where the reference runs add_rms_norm and then the
projection. The decoder layer calls
``project_qkv`` then ``attend_qkv``; ``forward`` takes an input already
normed.
"""

from __future__ import annotations

import torch
from torch import nn

from moeframe.attention.qkv_prologue import QKVPrologue
from moeframe.model.layers.context import ForwardContext
from moeframe.model.layers.norm import RMSNorm
from moeframe.model.layers.rotary import Rotary
from moeframe.model.layers.small_gemv import norm_project, project
from moeframe.model.layers.topk_sum import MoEOutput
from moeframe.model.spec import AttentionSpec


def qkv_widths(spec: AttentionSpec) -> tuple[int, int]:
    """Output features of q and of each of k and v."""
    return spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim


class Attention(nn.Module):
    def __init__(self, spec: AttentionSpec, hidden_size: int, eps: float, rotary: Rotary, layer_idx: int) -> None:
        super().__init__()
        self.spec, self.rotary, self.layer_idx = spec, rotary, layer_idx
        q_out, kv_out = qkv_widths(spec)
        self.qkv_proj = nn.Linear(hidden_size, q_out + 2 * kv_out, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(q_out, hidden_size, bias=spec.out_bias)
        if spec.qk_norm == "per_head":
            self.q_norm, self.k_norm = RMSNorm(spec.head_dim, eps), RMSNorm(spec.head_dim, eps)
        elif spec.qk_norm == "full":
            self.q_norm, self.k_norm = RMSNorm(q_out, eps), RMSNorm(kv_out, eps)
        self.scale = spec.head_dim**-0.5
        # The next layer's attention (in a tuple: not a submodule), whose qkv weight the o projection
        # may prefetch into L2 (moeframe/gpu/l2_prefetch.py); set by the model.
        self._next: tuple[Attention, ...] = ()

    def prefetch_after_o(self, next_attention: Attention) -> None:
        """Let the o projection pull ``next_attention``'s qkv weight into L2 where ``runner.l2_prefetch`` applies."""
        self._next = (next_attention,)

    def _l2_prefetch_target(self) -> torch.Tensor | None:
        qkv = self._next[0].qkv_proj if self._next else None
        return qkv.weight if type(qkv) is nn.Linear else None

    def forward(self, x: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """Attention output [T, hidden] of normed hidden states x [T, hidden]."""
        return self.attend_qkv(project(self.qkv_proj, x), positions, ctx)

    def project_qkv(
        self, h: MoEOutput, residual: torch.Tensor | None, norm: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(qkv_proj(norm(h + residual)), h + residual): the layer's input norm and the qkv projection.

        ``residual`` is None in the first layer (no add); ``h``, the previous
        layer's MLP output, may have its top-k sum pending (topk_sum.py). One
        launch at decode sizes on CUDA (small_gemv.norm_project);
        norm.add_forward then the projection elsewhere.
        """
        return norm_project(norm, self.qkv_proj, h, residual)

    def attend_qkv(self, qkv: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """Attention output [T, hidden] of the fused projection qkv [T, q + 2 kv]: prologue, attention, o_proj.

        On CUDA the prologue is one Triton launch (attention/qkv_prologue.py),
        or part of the attention's own launch where the backend fuses it
        (``runner.decode_attention_prologue``); the torch ops elsewhere.
        """
        spec, n = self.spec, qkv.shape[0]
        q_out, kv_out = qkv_widths(spec)
        q, k, v = qkv.split([q_out, kv_out, kv_out], dim=-1)
        k_cache, v_cache = ctx.k_cache[self.layer_idx], ctx.v_cache[self.layer_idx]
        if not q.is_cuda:
            q = self._prologue_torch(q, k, v, positions, k_cache, v_cache, ctx.batch.out_slots)
            out = ctx.attend(q, k_cache, v_cache, ctx.batch, self.scale)
        elif spec.qk_norm == "full" and not isinstance(self.q_norm, RMSNorm):
            # Tensor parallel: the norm spans ranks (tp_layers.ShardedRMSNorm all-reduces its
            # sum of squares), so it runs before the prologue, which then clips and rotates.
            prologue = self._qkv_prologue(positions, q.dtype, "none")
            q = prologue.apply(self.q_norm(q), self.k_norm(k), v, k_cache, v_cache, ctx.batch.out_slots)
            out = ctx.attend(q, k_cache, v_cache, ctx.batch, self.scale)
        else:
            out = ctx.attend_prologue(q, k, v, self._qkv_prologue(positions, q.dtype, spec.qk_norm), self.layer_idx, self.scale)
        return project(self.o_proj, out.reshape(n, -1), self._l2_prefetch_target())

    def _prologue_torch(self, q, k, v, positions, k_cache, v_cache, out_slots) -> torch.Tensor:
        """q/k norms, clip, rotary and the KV write as torch ops: the reference, and the CPU path."""
        spec, n = self.spec, q.shape[0]
        if spec.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        if spec.clip_qkv is not None:
            q, k, v = (t.clamp(-spec.clip_qkv, spec.clip_qkv) for t in (q, k, v))
        q = q.view(n, spec.num_heads, spec.head_dim)
        k = k.view(n, spec.num_kv_heads, spec.head_dim)
        v = v.view(n, spec.num_kv_heads, spec.head_dim)
        if spec.qk_norm == "per_head":
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = self.rotary.cos_sin(positions, q.dtype)
        q, k = self.rotary.apply(q, cos, sin), self.rotary.apply(k, cos, sin)
        k_cache[out_slots] = k.to(k_cache.dtype)
        v_cache[out_slots] = v.to(v_cache.dtype)
        return q

    def _qkv_prologue(self, positions: torch.Tensor, dtype: torch.dtype, norm: str) -> QKVPrologue:
        """_prologue_torch's settings for the Triton prologue (qkv_prologue.py), with the q/k norm ``norm``."""
        weights, eps = (None, None), 0.0
        if norm != "none":
            weights, eps = (self.q_norm.weight, self.k_norm.weight), self.q_norm.eps
        cos, sin = self.rotary.cos_sin(positions, dtype)
        return QKVPrologue(
            q_norm_weight=weights[0], k_norm_weight=weights[1], norm=norm, eps=eps, clip=self.spec.clip_qkv,
            cos=cos, sin=sin, interleave=self.rotary.interleave,
        )  # fmt: skip
