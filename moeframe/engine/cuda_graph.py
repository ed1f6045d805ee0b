"""CUDA-graph capture of decode steps for a set of batch sizes, replayed with padding.

A decode step of a small batch is bound by kernel launches, not by the GPU:
capturing the whole forward once per batch size and replaying it removes
the Python and launch overhead (SGLang's CudaGraphRunner, nano-vllm's
capture_cudagraph). A batch of b requests replays the smallest captured size
>= b; the padding rows read and write one scratch KV slot that no request
owns, so they never touch real KV.

The graphs read their inputs (token ids, positions, output slots, kv indptr,
kv indices) from views into a packed device buffer (one of two, below). The
engine's decode step is packed on the host, padding included, into a pinned
buffer of the same layout and uploaded with one copy, instead of building a
device batch and then copying or filling each input (SGLang and vLLM
likewise stage decode inputs in pinned memory).

The upload does not block: with overlapped decode the next step is packed
and launched while the GPU still runs the last one. Two pinned buffers take
turns with the device buffers, and a buffer is rewritten only once the event
recorded after its last copy has passed (vLLM's and SGLang's overlap
schedulers likewise keep their staged inputs alive until the copy is done).

Each batch size has two graphs, one per device input buffer, and each
writes its greedy choice (the argmax of its logits) into the other buffer's
token-id input, which the next step reads. A greedy overlapped step, whose
inputs are exactly those ids, uploads everything else into its buffer on a
side stream while the step before still runs from the other one, and the
ids go back to the host on another side stream: the compute stream runs
replay after replay with no copy between them (SGLang's overlap scheduler
likewise resolves the next step's ids on the device; vLLM keeps its
persistent input buffers and copies on separate streams).
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
from moeframe.model.layers.routes import RouteBuffer, StepRoutes

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
    """Decode graphs for each batch size, twice: one per input buffer, the two taking turns step by step.

    The graph of buffer s reads its inputs from buffer s and writes its greedy
    ids into the token-id input of buffer 1 - s, which the next step reads.
    So while step n replays from one buffer, step n + 1's inputs (all but its
    ids) upload into the other on a stream of their own, and step n's ids are
    read back on another (ModelRunner.read_back) while step n + 1 runs: between
    two greedy replays the compute stream waits on an event, with no copy of its own.
    The padding rows of such a step keep the ids the argmax left there (token
    ids all the same: padding rows touch the scratch slot only). With a
    RouteBuffer the graph of buffer s also writes its routes into half s.
    """

    def __init__(
        self,
        model: CausalLM,
        pool: KVPool,
        attend: AttendFn,
        batch_sizes: list[int],
        max_context: int,
        device: torch.device,
        routes: RouteBuffer | None = None,
        moe_index: dict[int, int] | None = None,
    ) -> None:
        self.model, self.pool, self.attend = model, pool, attend
        self.routes = None if routes is None else StepRoutes(moe_index or {}, routes)
        self.batch_sizes = sorted(set(batch_sizes))
        max_bs = self.batch_sizes[-1]
        scratch = pool.alloc(1)
        if scratch is None:
            raise RuntimeError("no KV slot free for CUDA-graph padding")
        self.scratch_slot = scratch[0]
        self.layout = DecodeInputLayout(max_bs, max_context)
        self.packed = [torch.zeros(self.layout.size, dtype=torch.int64, device=device) for _ in range(2)]
        self.static = [self.layout.views(buf, torch.int32) for buf in self.packed]
        for static in self.static:
            static.out_slots.fill_(self.scratch_slot)
            static.kv_indptr.copy_(torch.arange(max_bs + 1, dtype=torch.int32, device=device))
            static.kv_indices.fill_(self.scratch_slot)
        self.staging = [torch.empty(self.layout.size, dtype=torch.int64, pin_memory=True) for _ in range(2)]
        self.staged = [self.layout.views(buf.numpy(), np.int32) for buf in self.staging]
        self.upload_stream = torch.cuda.Stream(device)
        self.uploaded = [torch.cuda.Event() for _ in range(2)]  # after the last upload into each buffer
        self.replayed = [torch.cuda.Event() for _ in range(2)]  # after the last replay that read each buffer
        self.side = 0  # the buffer (and staging buffer) the next step uses
        self.q_indptr = torch.arange(max_bs + 1, dtype=torch.int32, device=device)
        self.logits_indices = torch.arange(max_bs, dtype=torch.int64, device=device)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}
        self.argmax: dict[tuple[int, int], torch.Tensor] = {}  # greedy ids of each graph's logits, computed inside it
        self.capture()

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    def static_batch(self, bs: int, side: int) -> ForwardBatch:
        s = self.static[side]
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

    def forward_static(self, bs: int, side: int) -> torch.Tensor:
        if self.routes is not None:
            self.routes.record.use(side)
        ctx = ForwardContext(self.static_batch(bs, side), self.pool.k, self.pool.v, self.attend, self.routes)
        return self.model(ctx)

    @torch.inference_mode()
    def capture(self) -> None:
        pool = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for bs in reversed(self.batch_sizes):
                for side in range(2):
                    for _ in range(2):
                        self.forward_static(bs, side)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool, stream=stream):
                        logits = self.outputs[bs, side] = self.forward_static(bs, side)
                        self.argmax[bs, side] = argmax_rows(logits, out=self.static[1 - side].input_ids[:bs])
                    pool = graph.pool()
                    self.graphs[bs, side] = graph
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.is_decode and batch.batch_size <= self.max_batch_size

    def _take_side(self) -> int:
        side, self.side = self.side, 1 - self.side
        return side

    def _replay(self, bs: int, side: int) -> None:
        self.graphs[bs, side].replay()
        self.replayed[side].record()

    @torch.inference_mode()
    def replay(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits [b, V] of a decode batch already on the device."""
        bs, side = self.padded_size(batch.batch_size), self._take_side()
        self.load_device(batch, bs, side)
        self._replay(bs, side)
        return self.outputs[bs, side][: batch.batch_size]

    def replay_decode(
        self,
        token_ids: list[int],
        contexts: Sequence[np.ndarray],
        input_ids: torch.Tensor | None = None,
        ids_read: torch.cuda.Event | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [b, V] and their argmax [b] of a decode step given on the host (see ``DecodeInputLayout.pack``).

        One upload, one replay, and the greedy choice without a launch of its
        own (gpt-fast compiles sampling into the step the same way). The
        returned tensors are the graph's own outputs: the replay after next
        rewrites them (the argmax is the other buffer's token-id input).
        ``input_ids`` (a device tensor [b]) replaces the host's token ids, so
        a step can take the last step's sampled ids without reading them back;
        where it is that argmax (or rows of it sampled over in place) the ids
        are in place already: the rest uploads on the upload stream, overlapping
        the step before, and the compute stream only waits for it. Host ids
        upload on the compute stream, after the step before has written its
        argmax there; ``ids_read``, the event after the last read-back of
        ids, comes first, as that read-back may still be reading the argmax
        these ids overwrite. No autograd op runs here, so it skips entering
        inference mode.
        """
        b = len(token_ids)
        bs, side = self.padded_size(b), self._take_side()
        static, staging = self.static[side], self.staging[side]
        self.uploaded[side].synchronize()
        used = self.layout.pack(self.staged[side], token_ids, contexts, bs, self.scratch_slot)
        compute = torch.cuda.current_stream()
        in_place = input_ids is not None and input_ids.data_ptr() == static.input_ids.data_ptr()
        if not in_place and ids_read is not None:
            compute.wait_event(ids_read)
        if input_ids is None:
            self.packed[side][:used].copy_(staging[:used], non_blocking=True)
            self.uploaded[side].record()
        else:
            # all but the ids: the replay that last read this buffer must be done; the one just before
            # writes only the ids
            start = self.layout.positions
            self.upload_stream.wait_event(self.replayed[side])
            with torch.cuda.stream(self.upload_stream):
                self.packed[side][start:used].copy_(staging[start:used], non_blocking=True)
                self.uploaded[side].record()
            compute.wait_event(self.uploaded[side])
            if not in_place:
                static.input_ids[:b].copy_(input_ids)
        self._replay(bs, side)
        return self.outputs[bs, side][:b], self.argmax[bs, side][:b]

    def padded_size(self, batch_size: int) -> int:
        return next(size for size in self.batch_sizes if size >= batch_size)

    def load_device(self, batch: ForwardBatch, bs: int, side: int) -> None:
        """Copy a batch that is already on the device into buffer ``side``'s inputs, padding rows after it."""
        s, b = self.static[side], batch.batch_size
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
