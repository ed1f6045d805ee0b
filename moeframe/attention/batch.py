"""ForwardBatch: everything one forward step needs, as plain tensors.

Requests are laid out ragged, as FlashInfer and SGLang do: the new tokens of
request b are rows ``q_indptr[b]:q_indptr[b+1]`` of the flattened batch, and
the KV slots of its whole context (cached prefix, then the new tokens) are
``kv_indices[kv_indptr[b]:kv_indptr[b+1]]``. New token i of request b sits at
context position ``kv_len[b] - q_len[b] + i`` and attends causally.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def is_decode(self) -> bool:
        return all(n == 1 for n in self.q_lens)

    @property
    def max_q_len(self) -> int:
        return max(self.q_lens)

    @property
    def max_kv_len(self) -> int:
        return max(self.kv_lens)

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

        def cumsum(lens: list[int]) -> torch.Tensor:
            acc = [0]
            for n in lens:
                acc.append(acc[-1] + n)
            return torch.tensor(acc, dtype=torch.int32, device=device)

        def longs(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=device)

        return ForwardBatch(
            input_ids=longs(ids),
            positions=longs(pos),
            out_slots=longs(out),
            q_indptr=cumsum(q_lens),
            kv_indptr=cumsum(kv_lens),
            kv_indices=longs([s for ctx in contexts for s in ctx]),
            logits_indices=longs(rows),
            q_lens=q_lens,
            kv_lens=kv_lens,
        )
