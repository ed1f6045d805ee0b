"""Attention over KV slots in plain torch: the oracle the Triton kernels are tested against."""

from __future__ import annotations

import torch

from moeframe.attention.batch import ForwardBatch


def attend_reference(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: ForwardBatch, scale: float
) -> torch.Tensor:
    """q [N, Hq, Dk]; k_cache [S, Hkv, Dk]; v_cache [S, Hkv, Dv] -> [N, Hq, Dv].

    Grouped-query attention: query head h reads KV head h // (Hq // Hkv).
    """
    num_q_heads, num_kv_heads = q.shape[1], k_cache.shape[1]
    out = q.new_empty(q.shape[0], num_q_heads, v_cache.shape[-1])
    q_ptr, kv_ptr = batch.q_indptr.tolist(), batch.kv_indptr.tolist()
    for b, (q_len, kv_len) in enumerate(zip(batch.q_lens, batch.kv_lens)):
        slots = batch.kv_indices[kv_ptr[b] : kv_ptr[b + 1]]
        k = k_cache[slots].repeat_interleave(num_q_heads // num_kv_heads, dim=1)
        v = v_cache[slots].repeat_interleave(num_q_heads // num_kv_heads, dim=1)
        qb = q[q_ptr[b] : q_ptr[b + 1]]
        scores = torch.einsum("qhd,khd->hqk", qb.float(), k.float()) * scale
        q_pos = torch.arange(kv_len - q_len, kv_len, device=q.device)[:, None]
        k_pos = torch.arange(kv_len, device=q.device)[None, :]
        scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[q_ptr[b] : q_ptr[b + 1]] = torch.einsum("hqk,khd->qhd", probs, v.float()).to(q.dtype)
    return out


def attend_rows(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: ForwardBatch, scale: float
) -> torch.Tensor:
    """``attend_reference`` one query at a time over exactly its causal keys (batch-invariant mode).

    A query at position p reads keys 0..p in one fixed-shape computation, the
    same whether it is decoded, prefilled in a chunk of any size, or shares
    its batch: no masked tail lengthens its softmax or its products
    (model/layers/batch_invariant.py says why that matters).
    """
    num_q_heads, num_kv_heads = q.shape[1], k_cache.shape[1]
    out = q.new_empty(q.shape[0], num_q_heads, v_cache.shape[-1])
    q_ptr, kv_ptr = batch.q_indptr.tolist(), batch.kv_indptr.tolist()
    for b, (q_len, kv_len) in enumerate(zip(batch.q_lens, batch.kv_lens)):
        slots = batch.kv_indices[kv_ptr[b] : kv_ptr[b + 1]]
        k = k_cache[slots].repeat_interleave(num_q_heads // num_kv_heads, dim=1).float()
        v = v_cache[slots].repeat_interleave(num_q_heads // num_kv_heads, dim=1).float()
        for i in range(q_len):
            row = q_ptr[b] + i
            visible = kv_len - q_len + i + 1
            scores = torch.einsum("hd,khd->hk", q[row].float(), k[:visible]) * scale
            probs = torch.softmax(scores, dim=-1)
            out[row] = torch.einsum("hk,khd->hd", probs, v[:visible]).to(q.dtype)
    return out
