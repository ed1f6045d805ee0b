"""ForwardBatch: everything one forward step needs, as plain tensors.

Requests are laid out ragged, as FlashInfer and SGLang do: the new tokens of
request b are rows ``q_indptr[b]:q_indptr[b+1]`` of the flattened batch, and
the KV slots of its whole context (cached prefix, then the new tokens) are
``kv_indices[kv_indptr[b]:kv_indptr[b+1]]``. New token i of request b sits at
context position ``kv_len[b] - q_len[b] + i`` and attends causally.

Either constructor fills one host array and copies it to the device once:
per-step host time matters at decode. ``build_decode`` is the decode step's
fast path: one token per request, contexts already int64 arrays (see
``moeframe.engine.slot_array``), so no Python list of the whole context is
built each step.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [N] int64, new tokens of all requests
    positions: torch.Tensor  # [N] int64
    out_slots: torch.Tensor  # [N] int64, KV slot each new token writes
    q_indptr: torch.Tensor  # [B+1] int32
    kv_indptr: torch.Tensor  # [B+1] int32
    kv_indices: torch.Tensor  # [sum kv_len] int64
    logits_indices: torch.Tensor  # [R] int64, rows whose logits are returned
    q_lens: list[int]
    kv_lens: list[int]

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]

    @property
    def batch_size(self) -> int:
        return len(self.q_lens)

    @cached_property
    def is_decode(self) -> bool:
        return all(n == 1 for n in self.q_lens)

    @property
    def max_q_len(self) -> int:
        return max(self.q_lens)

    @property
    def max_kv_len(self) -> int:
        return max(self.kv_lens)

    def select_requests(self, lo: int, hi: int) -> "ForwardBatch":
        """Requests ``lo:hi`` as a batch of their own (a pipeline micro-batch), slicing the device tensors.

        Offsets come from the host lengths, so nothing waits for the device.
        ``logits_indices`` holds either one row per request or every token's
        row (``all_logits``); a decode batch is both, and either slice agrees.
        """
        q_ptr, kv_ptr = cumsum(self.q_lens), cumsum(self.kv_lens)
        q_lo, q_hi, kv_lo, kv_hi = q_ptr[lo], q_ptr[hi], kv_ptr[lo], kv_ptr[hi]
        rows = self.logits_indices
        rows = rows[q_lo:q_hi] if rows.shape[0] == self.num_tokens else rows[lo:hi]
        return ForwardBatch(
            input_ids=self.input_ids[q_lo:q_hi],
            positions=self.positions[q_lo:q_hi],
            out_slots=self.out_slots[q_lo:q_hi],
            q_indptr=self.q_indptr[lo : hi + 1] - q_lo,
            kv_indptr=self.kv_indptr[lo : hi + 1] - kv_lo,
            kv_indices=self.kv_indices[kv_lo:kv_hi],
            logits_indices=rows - q_lo,
            q_lens=self.q_lens[lo:hi],
            kv_lens=self.kv_lens[lo:hi],
        )

    @staticmethod
    def build(
        new_tokens: list[list[int]],
        contexts: list[list[int]],
        device: torch.device | str,
        all_logits: bool = False,
    ) -> "ForwardBatch":
        """From each request's new token ids and the slot list of its whole context.

        ``contexts[b]`` lists the slots of request b's cached prefix followed by
        the slots its new tokens will write.
        """
        q_lens = [len(t) for t in new_tokens]
        kv_lens = [len(c) for c in contexts]
        ids, pos, out, rows = [], [], [], []
        row = 0
        for toks, ctx in zip(new_tokens, contexts):
            start = len(ctx) - len(toks)
            ids.extend(toks)
            pos.extend(range(start, len(ctx)))
            out.extend(ctx[start:])
            rows.extend(range(row, row + len(toks)) if all_logits else [row + len(toks) - 1])
            row += len(toks)

        q_indptr, kv_indptr = cumsum(q_lens), cumsum(kv_lens)
        parts = [ids, pos, out, list(itertools.chain.from_iterable(contexts)), rows, q_indptr, kv_indptr]
        host = torch.tensor(list(itertools.chain.from_iterable(parts)), dtype=torch.int64)
        return ForwardBatch.from_host(host, [len(p) for p in parts], q_lens, kv_lens, device)

    @staticmethod
    def build_decode(token_ids: list[int], contexts: Sequence[np.ndarray], device: torch.device | str) -> "ForwardBatch":
        """One new token per request: ``token_ids[b]`` writes ``contexts[b][-1]``, the last slot of its context.

        The same batch as ``build([[t] for t in token_ids], contexts, device)``.
        """
        b = len(token_ids)
        kv_lens = [c.shape[0] for c in contexts]
        kv_ptr = cumsum(kv_lens)
        total = kv_ptr[-1]
        host = np.empty(6 * b + 2 + total, dtype=np.int64)
        host[:b] = token_ids
        host[b : 2 * b] = [n - 1 for n in kv_lens]
        host[2 * b : 3 * b] = [c[-1] for c in contexts]
        np.concatenate(contexts, out=host[3 * b : 3 * b + total])
        host[3 * b + total :] = [*range(b), *range(b + 1), *kv_ptr]
        sizes = [b, b, b, total, b, b + 1, b + 1]
        return ForwardBatch.from_host(torch.from_numpy(host), sizes, [1] * b, kv_lens, device)

    @staticmethod
    def from_host(
        host: torch.Tensor, sizes: list[int], q_lens: list[int], kv_lens: list[int], device: torch.device | str
    ) -> "ForwardBatch":
        """Split one int64 host tensor (ids, positions, out slots, kv indices, rows, q indptr, kv indptr) onto ``device``."""
        device = torch.device(device)
        packed = host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host
        input_ids, positions, out_slots, kv_indices, logits_indices, q_ptr, kv_ptr = packed.split(sizes)
        return ForwardBatch(
            input_ids=input_ids,
            positions=positions,
            out_slots=out_slots,
            q_indptr=q_ptr.to(torch.int32),
            kv_indptr=kv_ptr.to(torch.int32),
            kv_indices=kv_indices,
            logits_indices=logits_indices,
            q_lens=q_lens,
            kv_lens=kv_lens,
        )


def cumsum(lens: list[int]) -> list[int]:
    return [0, *itertools.accumulate(lens)]
