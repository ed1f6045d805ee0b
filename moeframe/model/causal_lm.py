"""The decoder stack every family shares: embed -> (attention, MLP or MoE) x L -> norm -> logits.

A layer hands its MLP output and the residual stream to the next, which adds
them in its input norm; an MoE output may come with its top-k sum pending
(model/layers/topk_sum.py), and that norm (or the final one) sums it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from moeframe.model.layers.attention import Attention
from moeframe.model.layers.context import ForwardContext
from moeframe.model.layers.mla import MultiLatentAttention
from moeframe.model.layers.mlp import GatedMLP
from moeframe.model.layers.moe import MoEBlock
from moeframe.model.layers.norm import RMSNorm
from moeframe.model.layers.rotary import Rotary
from moeframe.model.layers.small_gemv import project_float
from moeframe.model.layers.topk_sum import MoEOutput
from moeframe.model.spec import ModelSpec

# Builds layer i's MoE block; the engine supplies it so routers, kernels and
# parallel strategy stay components chosen by config.
MoEFactory = Callable[[int], MoEBlock]


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, layer_idx: int, rotary: Rotary, moe_factory: MoEFactory, hf_config: object | None) -> None:
        super().__init__()
        eps = spec.rms_norm_eps
        self.input_layernorm = RMSNorm(spec.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, eps)
        if spec.attention.mla is not None:
            scaling = spec.rope.scaling
            self.self_attn = MultiLatentAttention(spec.attention, spec.hidden_size, eps, rotary, layer_idx, scaling)
        else:
            self.self_attn = Attention(spec.attention, spec.hidden_size, eps, rotary, layer_idx)
        self.is_sparse = spec.is_moe and spec.sparse_layers[layer_idx]
        if self.is_sparse:
            self.mlp: nn.Module = moe_factory(layer_idx)
        else:
            self.mlp = GatedMLP(spec.hidden_size, spec.intermediate_size, bias=spec.mlp_bias)

    def forward(
        self, h: MoEOutput, residual: torch.Tensor | None, positions: torch.Tensor, ctx: ForwardContext
    ) -> tuple[MoEOutput, torch.Tensor]:
        """Returns (this layer's MLP output, the residual stream before it); the next layer's input norm adds them."""
        if isinstance(self.self_attn, Attention):
            # With runner.decode_gemv=fused the input norm runs inside the qkv GEMV on CUDA decode.
            qkv, residual = self.self_attn.project_qkv(h, residual, self.input_layernorm)
            h = self.self_attn.attend_qkv(qkv, positions, ctx)
        else:
            x, residual = self.input_layernorm.add_forward(h, residual)
            h = self.self_attn(x, positions, ctx)
        if self.is_sparse:
            # The post-attention norm runs inside the router's gate launch where it has one (CUDA decode).
            return self.mlp.forward_residual(h, residual, self.post_attention_layernorm, ctx.batch.input_ids, positions, ctx.routes)
        x, residual = self.post_attention_layernorm.add_forward(h, residual)
        return self.mlp(x), residual


class HeldElsewhere(nn.Module):
    """A part of the model (a layer, the embedding, the head) that another pipeline rank holds: no weights here."""

    is_sparse = False

    def forward(self, *_: object) -> None:
        raise RuntimeError("this part of the model is held by another pipeline stage")


class CausalLM(nn.Module):
    def __init__(self, spec: ModelSpec, moe_factory: MoEFactory, hf_config: object | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        rotary = Rotary(spec.rope, hf_config)
        self.layers = nn.ModuleList(
            DecoderLayer(spec, i, rotary, moe_factory, hf_config) for i in range(spec.num_layers)
        )
        # Under runner.l2_prefetch each o projection pulls the next layer's qkv weight into L2; the last one the
        # first layer's, read at the start of the next decode step (the lm_head streams evict-first in between).
        for layer, next_layer in zip(self.layers, [*self.layers[1:], self.layers[0]]):
            if isinstance(layer.self_attn, Attention) and isinstance(next_layer.self_attn, Attention):
                layer.self_attn.prefetch_after_o(next_layer.self_attn)
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, ctx: ForwardContext) -> torch.Tensor:
        """Logits [R, V] (float32) of the rows ``ctx.batch.logits_indices`` selects."""
        h, residual = self.run_layers(self.embed_tokens(ctx.batch.input_ids), None, ctx, range(len(self.layers)))
        return self.logits(h, residual, ctx)

    def run_layers(
        self, h: MoEOutput, residual: torch.Tensor | None, ctx: ForwardContext, layers: range
    ) -> tuple[MoEOutput, torch.Tensor | None]:
        """Layers ``layers`` in order over the stream (h, residual); a pipeline stage runs its own range."""
        for i in layers:
            h, residual = self.layers[i](h, residual, ctx.batch.positions, ctx)
        return h, residual

    def logits(self, h: MoEOutput, residual: torch.Tensor | None, ctx: ForwardContext) -> torch.Tensor:
        """The final norm and LM head over the rows that want logits."""
        batch = ctx.batch
        if not batch.is_decode:  # a decode batch wants every row: no gather
            rows = batch.logits_indices  # a pending top-k sum gathers its tokens' k rows
            h, residual = h[rows], residual[rows]
        h, _ = self.norm.add_forward(h, residual)
        return project_float(self.lm_head, h)
