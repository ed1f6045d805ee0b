"""Greedy token choice (``argmax`` over the vocabulary) in one short Triton launch on CUDA.

A batch-1 decode step ends with an argmax over ~50k float32 logits; aten's
reduction runs it on one block of threads and took 13.5 us on an H100 at
OLMoE's vocabulary (benchmarks/profile_olmoe-1b-7b_b1.txt), more than a
whole decoder layer's attention. Split into 4096-wide chunks, one program
each, whose last program per row merges the chunks (the split-then-merge
shape of flash-decoding, merged in the split launch as the decode
attention does), the same answer takes one PDL-aware launch that chains onto
the lm_head (the two launches, partial and merge, it replaces ended 3.6 us
after the lm_head on an H100); the CUDA graphs capture it after each decode
step's logits.
The answer is ``torch.argmax``'s, ties and NaN included; other devices call it.
"""

from __future__ import annotations

from types import ModuleType

import torch
import triton

from moeframe.gpu.pdl import pdl_args

CHUNK = 4096
# Rows the first counters hold; more rows allocate more (the CUDA graphs call argmax once before capturing).
MIN_COUNTED_ROWS = 256

_counts: dict[torch.device, torch.Tensor] = {}


def _kernels() -> ModuleType:
    # Imported on first use, not with the package: Triton chooses between
    # compiling and interpreting (TRITON_INTERPRET) when a kernel is defined.
    from moeframe.engine import _argmax_kernels

    return _argmax_kernels


def argmax_rows(logits: torch.Tensor, chunk: int = CHUNK, out: torch.Tensor | None = None) -> torch.Tensor:
    """int64 [B]: ``logits.argmax(-1)`` of float logits [B, V]; Triton on CUDA, torch elsewhere.

    ``out``: an int64 [B] tensor (contiguous) to write the answer into, and return.
    """
    if not logits.is_cuda or logits.dim() != 2 or logits.shape[1] == 0:
        return logits.argmax(dim=-1) if out is None else torch.argmax(logits, dim=-1, out=out)
    return triton_argmax_rows(logits, chunk, out)


def row_counts(device: torch.device, rows: int) -> torch.Tensor:
    """Zeroed int32 completion counters of ``argmax_kernel``, one per row; the kernel leaves them at zero."""
    counts = _counts.get(device)
    if counts is None or counts.shape[0] < rows:
        counts = _counts[device] = torch.zeros(max(rows, MIN_COUNTED_ROWS), dtype=torch.int32, device=device)
    return counts


def triton_argmax_rows(logits: torch.Tensor, chunk: int = CHUNK, out: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton path of ``argmax_rows`` on any device the kernels run on (the interpreter in tests)."""
    rows, vocab = logits.shape
    x = logits if logits.stride(1) == 1 else logits.contiguous()
    num_chunks = triton.cdiv(vocab, chunk)
    part_val = torch.empty(rows, num_chunks, dtype=torch.float32, device=x.device)
    part_idx = torch.empty(rows, num_chunks, dtype=torch.int32, device=x.device)
    part_nan = torch.empty(rows, num_chunks, dtype=torch.int32, device=x.device)
    if out is None:
        out = torch.empty(rows, dtype=torch.int64, device=x.device)
    elif out.shape != (rows,) or out.dtype != torch.int64 or out.stride(0) != 1 or out.device != x.device:
        raise ValueError(f"out must be a contiguous int64 [{rows}] tensor on {x.device}, got {out.dtype} {list(out.shape)}")
    if rows == 0:
        return out
    _kernels().argmax_kernel[(rows, num_chunks)](
        x, part_val, part_idx, part_nan, row_counts(x.device, rows), out, vocab, x.stride(0), num_chunks,
        BLOCK=chunk, BLOCK_C=triton.next_power_of_2(num_chunks), num_warps=4, **pdl_args(x),
    )  # fmt: skip
    return out
