"""Packed allowed-token bitmasks and their application to a batch of logits.

The layout is xgrammar's (and SGLang's/vLLM's): one int32 row of
``ceil(vocab_size / 32)`` words per request, bit ``t % 32`` of word
``t // 32`` set when token ``t`` is allowed. Rows of unconstrained requests
stay all ones, so the whole batch is masked by one kernel-sized operation on
the logits' device rather than a Python loop over requests.
"""

from __future__ import annotations

import numpy as np
import torch

ALL_ALLOWED = -1  # int32 with every bit set


def bitmask_width(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def allocate_bitmask(batch_size: int, vocab_size: int) -> torch.Tensor:
    """A CPU int32 bitmask [batch_size, ceil(vocab_size/32)] with every token allowed."""
    return torch.full((batch_size, bitmask_width(vocab_size)), ALL_ALLOWED, dtype=torch.int32)


def pack_allowed(allowed: np.ndarray) -> np.ndarray:
    """Bool [V] -> int32 [ceil(V/32)] in the layout above."""
    width = bitmask_width(allowed.shape[0])
    padded = np.zeros(width * 32, dtype=bool)
    padded[: allowed.shape[0]] = allowed
    return np.packbits(padded, bitorder="little").view("<i4").astype(np.int32)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Int32 [B, W] -> bool [B, vocab_size] on the bitmask's device."""
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set disallowed logits to -inf in place; ``logits`` [B, V], ``bitmask`` [B, ceil(V/32)] int32."""
    if bitmask.shape != (logits.shape[0], bitmask_width(logits.shape[1])):
        raise ValueError(f"bitmask shape {tuple(bitmask.shape)} does not fit logits {tuple(logits.shape)}")
    allowed = unpack_bitmask(bitmask.to(logits.device, non_blocking=True), logits.shape[1])
    logits.masked_fill_(~allowed, float("-inf"))
