"""Attention over KV slot indices: the torch reference and the Triton decode/extend kernels.

Every backend has the signature of ``attend_reference``:
``attend(q [N, Hq, Dk], k_cache [S, Hkv, Dk], v_cache [S, Hkv, Dv], batch, scale) -> [N, Hq, Dv]``.
A backend that can fold the qkv prologue (norms, clip, rotary, KV write:
qkv_prologue.py) into its own launch also has ``with_prologue`` (the
``FusesPrologue`` protocol); ``attend_with_prologue`` calls it, or runs the
prologue and then the plain backend for the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from moeframe.attention.batch import ForwardBatch
from moeframe.attention.qkv_prologue import QKVPrologue
from moeframe.attention.reference import attend_reference, attend_rows
from moeframe.errors import ConfigError

AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, ForwardBatch, float], torch.Tensor]

BACKENDS = ("auto", "torch", "triton", "rows")  # rows: the torch reference one query at a time (deterministic)

DECODE_MERGES = ("fused", "separate")
DECODE_PROLOGUES = ("fused", "separate")

_decode_kv_splits = 0  # runner.decode_kv_splits: 0 lets triton_decode.default_num_kv_splits choose
_decode_fused_merge = True  # runner.decode_attention_merge == "fused"
_decode_fused_prologue = True  # runner.decode_attention_prologue == "fused"


@runtime_checkable
class FusesPrologue(Protocol):
    """A backend that takes raw q [N, Hq*Dk], k [N, Hkv*Dk], v [N, Hkv*Dv] and a QKVPrologue, and may fuse the two."""

    def with_prologue(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prologue: QKVPrologue,
        k_cache: torch.Tensor, v_cache: torch.Tensor, batch: ForwardBatch, scale: float,
    ) -> torch.Tensor: ...  # fmt: skip


def attend_with_prologue(
    attend: AttendFn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prologue: QKVPrologue,
    k_cache: torch.Tensor, v_cache: torch.Tensor, batch: ForwardBatch, scale: float,
) -> torch.Tensor:  # fmt: skip
    """``attend`` of the prologue's q after it wrote k and v to the caches at ``batch.out_slots``, fused where the backend can."""
    if isinstance(attend, FusesPrologue):
        return attend.with_prologue(q, k, v, prologue, k_cache, v_cache, batch, scale)
    return attend(prologue.apply(q, k, v, k_cache, v_cache, batch.out_slots), k_cache, v_cache, batch, scale)


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


def set_decode_attention_prologue(mode: str) -> None:
    """Where the Triton decode attention gets q, k and v: from the qkv prologue's launch ("separate") or by
    computing the prologue itself in its split launch from the raw projection ("fused")."""
    global _decode_fused_prologue
    if mode not in DECODE_PROLOGUES:
        choices = ", ".join(DECODE_PROLOGUES)
        raise ConfigError(f"runner.decode_attention_prologue: unknown choice '{mode}'; valid choices: {choices}")
    _decode_fused_prologue = mode == "fused"


class TritonAttention:
    """The Triton decode (triton_decode.py) and extend (triton_extend.py) kernels; fuses the prologue at decode
    unless ``runner.decode_attention_prologue=separate``."""

    def __init__(self) -> None:
        # Imported on first use: Triton decides between compiling and interpreting
        # (TRITON_INTERPRET) when a kernel is defined, and CPU runs need neither.
        from moeframe.attention import triton_decode, triton_extend

        self._decode, self._extend = triton_decode, triton_extend

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: ForwardBatch, scale: float) -> torch.Tensor:
        if batch.is_decode:
            return self._decode.decode_attention(q, k_cache, v_cache, batch, scale, _decode_kv_splits or None, _decode_fused_merge)
        return self._extend.extend_attention(q, k_cache, v_cache, batch, scale)

    def with_prologue(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prologue: QKVPrologue,
        k_cache: torch.Tensor, v_cache: torch.Tensor, batch: ForwardBatch, scale: float,
    ) -> torch.Tensor:  # fmt: skip
        if batch.is_decode and _decode_fused_prologue:
            return self._decode.decode_attention_prologue(
                q, k, v, prologue, k_cache, v_cache, batch, scale, _decode_kv_splits or None, _decode_fused_merge
            )
        return self(prologue.apply(q, k, v, k_cache, v_cache, batch.out_slots), k_cache, v_cache, batch, scale)


def get_attention_backend(name: str, device: torch.device | str) -> AttendFn:
    """``auto``: the Triton kernels on CUDA, the torch reference elsewhere."""
    if name not in BACKENDS:
        raise ConfigError(f"attention backend: unknown choice '{name}'; valid choices: {', '.join(BACKENDS)}")
    if name == "auto":
        name = "triton" if torch.device(device).type == "cuda" else "torch"
    if name == "rows":
        return attend_rows
    return TritonAttention() if name == "triton" else attend_reference


__all__ = [
    "AttendFn",
    "ForwardBatch",
    "FusesPrologue",
    "QKVPrologue",
    "attend_reference",
    "attend_rows",
    "attend_with_prologue",
    "get_attention_backend",
    "set_decode_attention_merge",
    "set_decode_attention_prologue",
    "set_decode_kv_splits",
]
