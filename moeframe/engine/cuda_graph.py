"""CUDA-graph capture of decode steps for a set of batch sizes, replayed with padding.

A decode step of a small batch is bound by kernel launches, not by the GPU:
capturing the whole forward once per batch size and replaying it removes
the Python and launch overhead (SGLang's CudaGraphRunner, nano-vllm's
capture_cudagraph). A batch of b requests replays the smallest captured size
>= b; the padding rows read and write one scratch KV slot that no request
owns, so they never touch real KV.
"""

from __future__ import annotations

import torch

from moeframe.attention.batch import ForwardBatch
from moeframe.cache.pool import KVPool
from moeframe.model.causal_lm import CausalLM
from moeframe.model.layers.context import AttendFn, ForwardContext


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
        longs = dict(dtype=torch.int64, device=device)
        self.input_ids = torch.zeros(max_bs, **longs)
        self.positions = torch.zeros(max_bs, **longs)
        self.out_slots = torch.full((max_bs,), self.scratch_slot, **longs)
        self.kv_indptr = torch.arange(max_bs + 1, dtype=torch.int32, device=device)
        self.q_indptr = torch.arange(max_bs + 1, dtype=torch.int32, device=device)
        self.kv_indices = torch.full((max_bs * max_context,), self.scratch_slot, **longs)
        self.logits_indices = torch.arange(max_bs, **longs)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.capture()

    def static_batch(self, bs: int) -> ForwardBatch:
        return ForwardBatch(
            input_ids=self.input_ids[:bs],
            positions=self.positions[:bs],
            out_slots=self.out_slots[:bs],
            q_indptr=self.q_indptr[: bs + 1],
            kv_indptr=self.kv_indptr[: bs + 1],
            kv_indices=self.kv_indices,
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
                pool = graph.pool()
                self.graphs[bs] = graph
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.is_decode and batch.batch_size <= self.batch_sizes[-1]

    @torch.inference_mode()
    def replay(self, batch: ForwardBatch) -> torch.Tensor:
        b = batch.batch_size
        bs = next(size for size in self.batch_sizes if size >= b)
        total = batch.kv_indices.shape[0]
        self.input_ids[:b].copy_(batch.input_ids)
        self.positions[:b].copy_(batch.positions)
        self.out_slots[:b].copy_(batch.out_slots)
        self.kv_indices[:total].copy_(batch.kv_indices)
        self.kv_indptr[: b + 1].copy_(batch.kv_indptr)
        if bs > b:
            self.input_ids[b:bs].zero_()
            self.positions[b:bs].zero_()
            self.out_slots[b:bs].fill_(self.scratch_slot)
            pad = torch.arange(1, bs - b + 1, dtype=torch.int32, device=self.kv_indptr.device)
            self.kv_indptr[b + 1 : bs + 1].copy_(pad + total)
            self.kv_indices[total : total + bs - b].fill_(self.scratch_slot)
        self.graphs[bs].replay()
        return self.outputs[bs][:b]
