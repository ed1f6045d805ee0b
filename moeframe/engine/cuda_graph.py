"""CUDA-graph capture of decode steps for a set of batch sizes, replayed with padding.

A decode step of a small batch is bound by kernel launches, not by the GPU:
capturing the whole forward once per batch size and replaying it removes
the Python and launch overhead (SGLang's CudaGraphRunner, nano-vllm's
capture_cudagraph). A batch of b requests replays the smallest captured size
>= b; the padding rows read and write one scratch KV slot that no request
owns, so they never touch real KV.

The graphs read their inputs (token ids, positions, output slots, kv indptr,
kv indices) from views into one packed device buffer. The engine's decode
step is packed on the host, padding included, into a pinned buffer of the
same layout and uploaded with one copy, instead of building a device batch
and then copying or filling each input (SGLang and vLLM likewise stage decode
inputs in pinned memory).

The upload does not block: with overlapped decode the next step is packed
and launched while the stream still runs the last one. Two pinned buffers
take turns, and a buffer is rewritten only once the event recorded after
its last copy has passed (vLLM's and SGLang's overlap schedulers likewise
keep their staged inputs alive until the copy is done).

Each graph writes its greedy choice (the argmax of its logits) into the
token-id input itself, so a greedy overlapped step, whose next inputs are
exactly those ids, uploads everything but the ids and copies nothing on
the device: between two replays the stream runs one upload, not an upload
and a copy (SGLang's overlap scheduler likewise resolves the next step's
ids on the device).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from moeframe.attention.batch import ForwardBatch, cumsum
from moeframe.cache.pool import KVPool
from moeframe.engine.greedy import argmax_rows
from moeframe.model.causal_lm import CausalLM
from moeframe.model.layers.context import AttendFn, ForwardContext

ALIGN = 16  # int64 elements: every input starts on a 128-byte boundary


@dataclass
class DecodeInputs:
    """The graphs' inputs as views into one packed int64 buffer (torch or numpy)."""

    input_ids: Any
    positions: Any
    out_slots: Any
    kv_indptr: Any  # int32
    kv_indices: Any


class DecodeInputLayout:
    """Where each decode input lives in the packed buffer, in int64 elements; kv_indices comes last."""

    def __init__(self, max_batch_size: int, max_context: int) -> None:
        def region(num_int64: int) -> int:
            nonlocal end
            start, end = end, end + -(-num_int64 // ALIGN) * ALIGN
            return start

        end = 0
        self.input_ids = region(max_batch_size)
        self.positions = region(max_batch_size)
        self.out_slots = region(max_batch_size)
        self.kv_indptr = region((max_batch_size + 2) // 2)  # max_batch_size + 1 int32 values
        self.kv_indices = end
        self.max_batch_size = max_batch_size
        self.size = end + max_batch_size * max_context

    def views(self, buf: Any, int32: Any) -> DecodeInputs:
        """Views of ``buf`` (a torch or numpy int64 buffer of ``size``); ``int32`` is that library's dtype."""
        m = self.max_batch_size
        indptr = buf[self.kv_indptr : self.kv_indices].view(int32)[: m + 1]
        return DecodeInputs(
            buf[self.input_ids : self.input_ids + m],
            buf[self.positions : self.positions + m],
            buf[self.out_slots : self.out_slots + m],
            indptr,
            buf[self.kv_indices : self.size],
        )

    def pack(self, host: DecodeInputs, token_ids: list[int], contexts: Sequence[np.ndarray], padded_size: int, scratch_slot: int) -> int:
        """Write a decode step padded to ``padded_size`` rows into numpy views; returns the int64 elements used.

        Row b decodes ``token_ids[b]`` into the last slot of ``contexts[b]``
        (as ``ForwardBatch.build_decode``). Padding rows read and write
        ``scratch_slot`` only: token 0 at position 0 with a one-slot context.
        """
        b, pad = len(token_ids), padded_size - len(token_ids)
        kv_lens = [c.shape[0] for c in contexts]
        kv_ptr = cumsum(kv_lens)
        total = kv_ptr[-1]
        host.input_ids[:padded_size] = [*token_ids, *[0] * pad]
        host.positions[:padded_size] = [*(n - 1 for n in kv_lens), *[0] * pad]
        host.out_slots[:padded_size] = [*(c[-1] for c in contexts), *[scratch_slot] * pad]
        host.kv_indptr[: padded_size + 1] = [*kv_ptr, *range(total + 1, total + pad + 1)]
        if b:
            np.concatenate(contexts, out=host.kv_indices[:total])
        host.kv_indices[total : total + pad] = scratch_slot
        return self.kv_indices + total + pad


class CudaGraphRunner:
    def __init__(
        self, model: CausalLM, pool: KVPool, attend: AttendFn, batch_sizes: list[int], max_context: int, device: torch.device
    ) -> None:
        self.model, self.pool, self.attend = model, pool, attend
        self.batch_sizes = sorted(set(batch_sizes))
        max_bs = self.batch_sizes[-1]
        scratch = pool.alloc(1)
        if scratch is None:
            raise RuntimeError("no KV slot free for CUDA-graph padding")
        self.scratch_slot = scratch[0]
        self.layout = DecodeInputLayout(max_bs, max_context)
        self.packed = torch.zeros(self.layout.size, dtype=torch.int64, device=device)
        self.static = self.layout.views(self.packed, torch.int32)
        self.static.out_slots.fill_(self.scratch_slot)
        self.static.kv_indptr.copy_(torch.arange(max_bs + 1, dtype=torch.int32, device=device))
        self.static.kv_indices.fill_(self.scratch_slot)
        self.staging = [torch.empty(self.layout.size, dtype=torch.int64, pin_memory=True) for _ in range(2)]
        self.staged = [self.layout.views(buf.numpy(), np.int32) for buf in self.staging]
        self.uploaded = [torch.cuda.Event() for _ in self.staging]  # each recorded after its buffer's last copy
        self.turn = 0  # the staging buffer the next step packs into
        self.q_indptr = torch.arange(max_bs + 1, dtype=torch.int32, device=device)
        self.logits_indices = torch.arange(max_bs, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.argmax: dict[int, torch.Tensor] = {}  # greedy ids of each graph's logits, computed inside it
        self.capture()

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    def static_batch(self, bs: int) -> ForwardBatch:
        s = self.static
        return ForwardBatch(
            input_ids=s.input_ids[:bs],
            positions=s.positions[:bs],
            out_slots=s.out_slots[:bs],
            q_indptr=self.q_indptr[: bs + 1],
            kv_indptr=s.kv_indptr[: bs + 1],
            kv_indices=s.kv_indices,
            logits_indices=self.logits_indices[:bs],
            q_lens=[1] * bs,
            kv_lens=[1] * bs,
        )

    def forward_static(self, bs: int) -> torch.Tensor:
        ctx = ForwardContext(self.static_batch(bs), self.pool.k, self.pool.v, self.attend)
        return self.model(ctx)

    @torch.inference_mode()
    def capture(self) -> None:
        pool = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for bs in reversed(self.batch_sizes):
                for _ in range(2):
                    self.forward_static(bs)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self.outputs[bs] = self.forward_static(bs)
                    self.argmax[bs] = argmax_rows(self.outputs[bs], out=self.static.input_ids[:bs])
                pool = graph.pool()
                self.graphs[bs] = graph
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.is_decode and batch.batch_size <= self.max_batch_size

    @torch.inference_mode()
    def replay(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits [b, V] of a decode batch already on the device."""
        bs = self.padded_size(batch.batch_size)
        self.load_device(batch, bs)
        self.graphs[bs].replay()
        return self.outputs[bs][: batch.batch_size]

    def replay_decode(
        self, token_ids: list[int], contexts: Sequence[np.ndarray], input_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [b, V] and their argmax [b] of a decode step given on the host (see ``DecodeInputLayout.pack``).

        One upload, one replay, and the greedy choice without a launch of its
        own (gpt-fast compiles sampling into the step the same way). The
        returned tensors are the graph's own outputs: the next replay of any
        size rewrites them (the argmax is the token-id input's first rows).
        ``input_ids`` (a device tensor [b]) replaces the host's token ids, so
        a step can take the last step's sampled ids without reading them back;
        where it is that argmax (or rows of it sampled over in place) the ids
        are in place already and the upload leaves them out. No autograd op
        runs here, so it skips entering inference mode.
        """
        b = len(token_ids)
        bs = self.padded_size(b)
        turn, self.turn = self.turn, 1 - self.turn
        self.uploaded[turn].synchronize()
        used = self.layout.pack(self.staged[turn], token_ids, contexts, bs, self.scratch_slot)
        in_place = input_ids is not None and input_ids.data_ptr() == self.static.input_ids.data_ptr()
        start = self.layout.positions if in_place else 0
        self.packed[start:used].copy_(self.staging[turn][start:used], non_blocking=True)
        self.uploaded[turn].record()
        if input_ids is not None and not in_place:
            self.static.input_ids[:b].copy_(input_ids)
        self.graphs[bs].replay()
        return self.outputs[bs][:b], self.argmax[bs][:b]

    def padded_size(self, batch_size: int) -> int:
        return next(size for size in self.batch_sizes if size >= batch_size)

    def load_device(self, batch: ForwardBatch, bs: int) -> None:
        """Copy a batch that is already on the device into the static inputs, padding rows after it."""
        s, b = self.static, batch.batch_size
        total = batch.kv_indices.shape[0]
        s.input_ids[:b].copy_(batch.input_ids)
        s.positions[:b].copy_(batch.positions)
        s.out_slots[:b].copy_(batch.out_slots)
        s.kv_indices[:total].copy_(batch.kv_indices)
        s.kv_indptr[: b + 1].copy_(batch.kv_indptr)
        if bs > b:
            s.input_ids[b:bs].zero_()
            s.positions[b:bs].zero_()
            s.out_slots[b:bs].fill_(self.scratch_slot)
            pad = torch.arange(1, bs - b + 1, dtype=torch.int32, device=s.kv_indptr.device)
            s.kv_indptr[b + 1 : bs + 1].copy_(pad + total)
            s.kv_indices[total : total + bs - b].fill_(self.scratch_slot)
