"""The KV pool: per layer, K and V indexed by token slot, and the free-slot list.

One pool per engine (SGLang's token_to_kv_pool, vLLM's KV cache tensors).
Requests own slot lists; attention gathers through them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class KVPool:
    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        kv_heads: int,
        k_dim: int,
        v_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        held_layers: Sequence[bool] | None = None,
    ) -> None:
        """``held_layers[i]`` False: layer i runs on another rank (a pipeline stage), so it gets no slots here."""
        if num_slots < 1:
            raise ValueError(f"the KV pool needs at least one slot, got {num_slots}")
        self.num_slots = num_slots
        held = [True] * num_layers if held_layers is None else list(held_layers)
        self.k = [torch.zeros(num_slots if h else 0, kv_heads, k_dim, dtype=dtype, device=device) for h in held]
        self.v = [torch.zeros(num_slots if h else 0, kv_heads, v_dim, dtype=dtype, device=device) for h in held]
        # Popped from the end: low slots first, so small runs stay compact.
        self._free: list[int] = list(range(num_slots - 1, -1, -1))

    @staticmethod
    def bytes_per_slot(num_layers: int, kv_heads: int, k_dim: int, v_dim: int, dtype: torch.dtype) -> int:
        return num_layers * kv_heads * (k_dim + v_dim) * torch.tensor([], dtype=dtype).element_size()

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes one token's K and V take over the layers this pool holds, as allocated."""
        return sum(t[0].numel() * t.element_size() for t in (*self.k, *self.v) if t.shape[0] > 0)

    @property
    def num_free_slots(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int] | None:
        """n free slots, or None (and nothing taken) when fewer are free."""
        if n > len(self._free):
            return None
        if n == 0:
            return []
        taken = self._free[-n:]
        del self._free[-n:]
        taken.reverse()
        return taken

    def alloc_contiguous(self, n: int) -> list[int] | None:
        """n free slots that are consecutive numbers (for block-aligned caches), or None."""
        # Fast path: whole blocks are freed as runs, so the slots alloc would hand out next usually form one.
        tail = self._free[-n:]
        if n > 0 and len(tail) == n and all(a - 1 == b for a, b in zip(tail, tail[1:])):
            del self._free[-n:]
            tail.reverse()
            return tail
        free = sorted(self._free)
        run_start = 0
        for i in range(1, len(free) + 1):
            if i == len(free) or free[i] != free[i - 1] + 1:
                if i - run_start >= n:
                    taken = free[run_start : run_start + n]
                    taken_set = set(taken)
                    self._free = [s for s in self._free if s not in taken_set]
                    return taken
                run_start = i
        return None

    def free(self, slots: list[int]) -> None:
        self._free.extend(reversed(slots))
