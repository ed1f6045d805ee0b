"""Greedy token choice (``argmax`` over the vocabulary) in two short Triton launches on CUDA.

A batch-1 decode step ends with an argmax over ~50k float32 logits; aten's
reduction runs it on one block of threads and took 13.5 us on an H100 at
OLMoE's vocabulary (benchmarks/profile_olmoe-1b-7b_b1.txt), more than a
whole decoder layer's attention. Split into 4096-wide chunks, one program
each, and a merge over the chunks (the split-then-merge shape of
flash-decoding), the same answer takes two launches of about a microsecond,
both PDL-aware so they chain onto the lm_head; the CUDA graphs capture it
after each decode step's logits. The answer is ``torch.argmax``'s, ties and
NaN included; other devices call it.
"""

from __future__ import annotations

from types import ModuleType

import torch
import triton

from moeframe.gpu.pdl import pdl_args

CHUNK = 4096


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
    kernels, pdl = _kernels(), pdl_args(x)
    kernels.argmax_partial_kernel[(rows, num_chunks)](
        x, part_val, part_idx, part_nan, vocab, x.stride(0), num_chunks, BLOCK=chunk, num_warps=4, **pdl
    )
    kernels.argmax_merge_kernel[(rows,)](
        part_val, part_idx, part_nan, out, vocab, num_chunks, BLOCK_C=triton.next_power_of_2(num_chunks), num_warps=1, **pdl
    )
    return out
