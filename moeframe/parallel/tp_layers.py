"""Megatron-style tensor-parallel surgery on a loaded model (Shoeybi et al., 2019).

Column-parallel projections keep this rank's output rows (its attention heads
or its slice of the FFN width); row-parallel projections keep the matching
input columns and sum the partial outputs over ranks with one all-reduce,
adding the bias once after it. The same split serves dense MLPs, shared
experts and every routed expert (w13 by intermediate rows, w2 by
intermediate columns), as vLLM's and SGLang's TP MoE layers do. Modules are
swapped for these explicit parallel ones, so the hot path stays readable by
printing the model. The surgery runs on the meta model before loading; the
loader then cuts each full tensor the same way (slicing.py).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from moeframe.model.layers.attention import Attention, qkv_widths
from moeframe.model.layers.mla import MultiLatentAttention
from moeframe.model.layers.mlp import GatedMLP
from moeframe.model.layers.moe import MoEBlock
from moeframe.model.layers.norm import RMSNorm
from moeframe.model.spec import AttentionSpec
from moeframe.parallel.comm import Comm
from moeframe.parallel.slicing import cut


def shard_range(size: int, world_size: int, rank: int) -> tuple[int, int]:
    """[lo, hi) of ``rank``'s contiguous block; the first ``size % world_size`` ranks get one more."""
    base, extra = divmod(size, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def column_linear(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    """A Linear that computes only output features ``rows`` of ``linear``."""
    out = nn.Linear(linear.in_features, rows.numel(), bias=linear.bias is not None, device="meta")
    out.weight = cut(linear.weight, 0, rows)
    if linear.bias is not None:
        out.bias = cut(linear.bias, 0, rows)
    return out


class RowParallelLinear(nn.Module):
    """x[:, cols] @ W[:, cols]^T summed over ranks, then the bias once."""

    def __init__(self, linear: nn.Linear, cols: torch.Tensor, comm: Comm) -> None:
        super().__init__()
        self.weight = cut(linear.weight, 1, cols)
        self.bias = linear.bias
        self.comm = comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.comm.all_reduce(F.linear(x, self.weight))
        return out if self.bias is None else out + self.bias


class ShardedRMSNorm(nn.Module):
    """RMSNorm over a feature dim split across ranks: the sum of squares is all-reduced.

    ``replicas``: how many ranks hold each feature (GQA with fewer KV heads
    than ranks replicates heads), divided out of the summed squares.
    """

    def __init__(self, norm: RMSNorm, cols: torch.Tensor, full_dim: int, replicas: int, comm: Comm) -> None:
        super().__init__()
        self.weight = cut(norm.weight, 0, cols)
        self.eps, self.full_dim, self.replicas, self.comm = norm.eps, full_dim, replicas, comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        sum_sq = self.comm.all_reduce(x.pow(2).sum(-1, keepdim=True)) / self.replicas
        x = x * torch.rsqrt(sum_sq / self.full_dim + self.eps)
        return self.weight * x.to(dtype)


def head_rows(heads: range, width: int) -> torch.Tensor:
    return torch.arange(heads.start * width, heads.stop * width)


def local_heads(total: int, world_size: int, rank: int) -> range:
    """Heads of ``rank``: a block when ``total`` divides evenly, else (fewer heads than ranks) the one it shares."""
    if total % world_size == 0:
        per = total // world_size
        return range(rank * per, (rank + 1) * per)
    head = rank * total // world_size
    return range(head, head + 1)


def check_heads(attention: AttentionSpec, world_size: int) -> None:
    if attention.num_heads % world_size:
        raise ValueError(f"tensor parallel needs attention heads ({attention.num_heads}) divisible by the world size ({world_size})")
    kv = attention.num_kv_heads
    if attention.mla is None and kv % world_size and world_size % kv:
        raise ValueError(f"tensor parallel needs KV heads ({kv}) to divide or be a multiple of the world size ({world_size})")


def local_attention_spec(attention: AttentionSpec, world_size: int) -> AttentionSpec:
    kv = attention.num_kv_heads if attention.mla else max(1, attention.num_kv_heads // world_size)
    return dataclasses.replace(attention, num_heads=attention.num_heads // world_size, num_kv_heads=kv)


def shard_attention(attn: Attention, world_size: int, rank: int, comm: Comm) -> None:
    spec, d = attn.spec, attn.spec.head_dim
    q_heads = local_heads(spec.num_heads, world_size, rank)
    kv_heads = local_heads(spec.num_kv_heads, world_size, rank)
    q_rows, kv_rows = head_rows(q_heads, d), head_rows(kv_heads, d)
    q_out, kv_out = qkv_widths(spec)
    # The fused rows keep the full layout's order: this rank's q heads, then its k heads, then its v heads.
    attn.qkv_proj = column_linear(attn.qkv_proj, torch.cat([q_rows, q_out + kv_rows, q_out + kv_out + kv_rows]))
    attn.o_proj = RowParallelLinear(attn.o_proj, q_rows, comm)
    if spec.qk_norm == "full":
        kv_replicas = max(1, world_size // spec.num_kv_heads)
        attn.q_norm = ShardedRMSNorm(attn.q_norm, q_rows, spec.num_heads * d, 1, comm)
        attn.k_norm = ShardedRMSNorm(attn.k_norm, kv_rows, spec.num_kv_heads * d, kv_replicas, comm)
    attn.spec = local_attention_spec(spec, world_size)


def shard_mla(attn: MultiLatentAttention, world_size: int, rank: int, comm: Comm) -> None:
    """Heads split; the shared latent projections (q_a, kv_a and their norms) stay whole on every rank."""
    mla, spec = attn.mla, attn.spec
    heads = local_heads(spec.num_heads, world_size, rank)
    qk_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    if mla.q_lora_rank is None:
        attn.q_proj = column_linear(attn.q_proj, head_rows(heads, qk_dim))
    else:
        attn.q_b_proj = column_linear(attn.q_b_proj, head_rows(heads, qk_dim))
    attn.kv_b_proj = column_linear(attn.kv_b_proj, head_rows(heads, mla.qk_nope_head_dim + mla.v_head_dim))
    attn.o_proj = RowParallelLinear(attn.o_proj, head_rows(heads, mla.v_head_dim), comm)
    attn.spec = local_attention_spec(spec, world_size)


def shard_gated_mlp(mlp: GatedMLP, world_size: int, rank: int, comm: Comm) -> None:
    lo, hi = shard_range(mlp.gate_proj.out_features, world_size, rank)
    cols = torch.arange(lo, hi)
    mlp.gate_proj = column_linear(mlp.gate_proj, cols)
    mlp.up_proj = column_linear(mlp.up_proj, cols)
    mlp.down_proj = RowParallelLinear(mlp.down_proj, cols, comm)


def shard_expert_columns(moe: MoEBlock, world_size: int, rank: int, comm: Comm) -> None:
    """Every routed expert keeps this rank's slice of its width; the runner all-reduces the partial sums."""
    inter = moe.w2.shape[2]
    lo, hi = shard_range(inter, world_size, rank)
    cols = torch.arange(lo, hi)
    moe.w13 = cut(moe.w13, 1, torch.cat([cols, inter + cols]))  # this slice of the gate rows, then of the up rows
    moe.w2 = cut(moe.w2, 2, cols)
    if moe.shared_experts is not None:
        shard_gated_mlp(moe.shared_experts, world_size, rank, comm)
