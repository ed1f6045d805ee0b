"""Runs the model on a scheduled batch: builds the ForwardBatch, picks the attention kernel, returns logits."""

from __future__ import annotations

import warnings

import torch

from moeframe.attention import get_attention_backend
from moeframe.attention.batch import ForwardBatch
from moeframe.cache.pool import KVPool
from moeframe.engine.cuda_graph import CudaGraphRunner
from moeframe.engine.scheduler import ScheduledBatch
from moeframe.model.causal_lm import CausalLM
from moeframe.model.layers.context import ForwardContext


class ModelRunner:
    def __init__(self, model: CausalLM, pool: KVPool, device: torch.device, attention: str = "auto") -> None:
        self.model, self.pool, self.device = model, pool, device
        self.attend = get_attention_backend(attention, device)
        self.graphs: CudaGraphRunner | None = None

    def capture_cuda_graphs(self, batch_sizes: list[int], max_context: int) -> None:
        """Capture decode for these batch sizes (CUDA only); later decode steps replay them.

        A kernel that syncs with the host (the reference expert loop) cannot be
        captured: the runner then stays eager and says so.
        """
        try:
            self.graphs = CudaGraphRunner(self.model, self.pool, self.attend, batch_sizes, max_context, self.device)
        except RuntimeError as err:
            warnings.warn(f"CUDA-graph capture failed, decoding eagerly: {str(err).splitlines()[0]}", stacklevel=2)
            self.graphs = None

    def make_batch(self, scheduled: ScheduledBatch, all_logits: bool = False) -> ForwardBatch:
        new_tokens, contexts = [], []
        for req, n in zip(scheduled.requests, scheduled.num_new_tokens):
            end = len(req.slots)
            start = end - n
            new_tokens.append(req.token_span(start, end))
            contexts.append(req.slots)
        return ForwardBatch.build(new_tokens, contexts, self.device, all_logits=all_logits)

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        if self.graphs is not None and self.graphs.can_run(batch):
            return self.graphs.replay(batch)
        ctx = ForwardContext(batch=batch, k_cache=self.pool.k, v_cache=self.pool.v, attend=self.attend)
        return self.model(ctx)
