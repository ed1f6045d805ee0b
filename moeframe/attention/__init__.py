"""Attention over KV slot indices: the torch reference and the Triton decode/extend kernels.

Every backend has the signature of ``attend_reference``:
``attend(q [N, Hq, Dk], k_cache [S, Hkv, Dk], v_cache [S, Hkv, Dv], batch, scale) -> [N, Hq, Dv]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moeframe.attention.batch import ForwardBatch
from moeframe.attention.reference import attend_reference
from moeframe.errors import ConfigError

AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, ForwardBatch, float], torch.Tensor]

BACKENDS = ("auto", "torch", "triton")

DECODE_MERGES = ("fused", "separate")

_decode_kv_splits = 0  # runner.decode_kv_splits: 0 lets triton_decode.default_num_kv_splits choose
_decode_fused_merge = True  # runner.decode_attention_merge == "fused"


def set_decode_kv_splits(splits: int) -> None:
    """How many chunks the Triton decode attention cuts each context into (0: its default); a tuning switch."""
    global _decode_kv_splits
    if splits < 0:
        raise ConfigError(f"runner.decode_kv_splits={splits}: must be >= 0 (0 picks the default)")
    _decode_kv_splits = splits


def set_decode_attention_merge(mode: str) -> None:
    """Where the Triton decode attention merges its splits: in the split launch ("fused") or a second one ("separate")."""
    global _decode_fused_merge
    if mode not in DECODE_MERGES:
        choices = ", ".join(DECODE_MERGES)
        raise ConfigError(f"runner.decode_attention_merge: unknown choice '{mode}'; valid choices: {choices}")
    _decode_fused_merge = mode == "fused"


def _triton_backend() -> AttendFn:
    # Imported on first use: Triton decides between compiling and interpreting
    # (TRITON_INTERPRET) when a kernel is defined, and CPU runs need neither.
    from moeframe.attention.triton_decode import decode_attention
    from moeframe.attention.triton_extend import extend_attention

    def attend_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: ForwardBatch, scale: float) -> torch.Tensor:
        if batch.is_decode:
            return decode_attention(q, k_cache, v_cache, batch, scale, _decode_kv_splits or None, _decode_fused_merge)
        return extend_attention(q, k_cache, v_cache, batch, scale)

    return attend_triton


def get_attention_backend(name: str, device: torch.device | str) -> AttendFn:
    """``auto``: the Triton kernels on CUDA, the torch reference elsewhere."""
    if name not in BACKENDS:
        raise ConfigError(f"attention backend: unknown choice '{name}'; valid choices: {', '.join(BACKENDS)}")
    if name == "auto":
        name = "triton" if torch.device(device).type == "cuda" else "torch"
    return _triton_backend() if name == "triton" else attend_reference


__all__ = [
    "AttendFn",
    "ForwardBatch",
    "attend_reference",
    "get_attention_backend",
    "set_decode_attention_merge",
    "set_decode_kv_splits",
]
