"""Batch-invariant numerics (``deterministic=true``): each token's arithmetic fixed whatever shares its batch.

A matmul's kernel, its blocking and its reduction order are chosen from the
shape, so a row of ``x @ W^T`` may round differently when the batch around it
has another size (cuBLAS and CPU BLAS both pick by M). SGLang's
``--enable-deterministic-inference`` and vLLM's ``VLLM_BATCH_INVARIANT``
swap in GEMM, reduction and attention kernels whose per-row schedule ignores
the batch (Thinking Machines' batch_invariant_ops); here the reference path
gets the same property the plain way: under this mode every projection runs
one row at a time, so a token's product is one fixed-shape call, the same in
a prefill chunk, a decode batch of 32 or alone. Attention does likewise per
query (attention/reference.py ``attend_rows``), and the experts through
``linear`` below, so a cached prefix's KV, a chunk boundary or a batch-mate
changes no bit. Slower, by design: the mode exists to make routing and
engine changes measurable against an engine that is itself invariant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_enabled = False


def set_batch_invariant(enabled: bool) -> None:
    """Whether projections, attention and experts compute each token on its own (``deterministic``)."""
    global _enabled
    _enabled = enabled


def batch_invariant() -> bool:
    return _enabled


def linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` one row at a time: every row's product is the same [1, K] x [K, N] call whatever T is."""
    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty(rows.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)
    for i in range(rows.shape[0]):
        out[i : i + 1] = F.linear(rows[i : i + 1], weight, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, row by row under batch-invariant mode."""
    return linear_rows(x, weight, bias) if _enabled else F.linear(x, weight, bias)
