"""Runs the model on a scheduled batch: builds the ForwardBatch, picks the attention kernel, returns logits.

A decode batch (one new token per request) takes ``ForwardBatch.build_decode``
over each request's incrementally mirrored slot array; when a captured graph
will replay it, ``run`` hands the same host inputs to the graph runner, which
uploads them in one copy.

For overlapped decode (``EngineCore.step``) ``run`` also takes the new
tokens as a device tensor, the previous step's sampled ids, so step n+1 is
launched before step n's tokens reach the host, and ``read_back`` copies
step n's ids into pinned memory on a stream of its own, so reading them
waits for step n alone and step n+1 does not wait for the copy (vLLM v1's
async output copy, SGLang's overlap scheduler).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from moeframe.attention import get_attention_backend
from moeframe.attention.batch import ForwardBatch
from moeframe.cache.pool import KVPool
from moeframe.engine.cuda_graph import CudaGraphRunner
from moeframe.engine.request import Request
from moeframe.engine.scheduler import ScheduledBatch
from moeframe.model.causal_lm import CausalLM
from moeframe.model.layers.context import ForwardContext


@dataclass
class StepLogits:
    logits: torch.Tensor  # [B, V] float32, one row per scheduled request
    argmax: torch.Tensor | None = None  # [B] logits.argmax(-1), when the CUDA graph computed it already


class HostIds:
    """Token ids on their way to the host; ``tolist`` waits for their copy only."""

    def __init__(self, ids: torch.Tensor, copied: torch.cuda.Event | None = None) -> None:
        self.ids, self.copied = ids, copied

    def tolist(self) -> list[int]:
        if self.copied is not None:
            self.copied.synchronize()
        return self.ids.tolist()


class ModelRunner:
    def __init__(
        self, model: CausalLM, pool: KVPool, device: torch.device, attention: str = "auto", overlap: bool = True
    ) -> None:
        self.model, self.pool, self.device = model, pool, device
        self.attend = get_attention_backend(attention, device)
        self.graphs: CudaGraphRunner | None = None
        self.overlap = overlap  # whether the engine may launch a decode step before reading the last one's tokens
        self.pinned_ids: torch.Tensor | None = None
        self.ids_copied: torch.cuda.Event | None = None
        self.readback_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

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
        if all(n == 1 for n in scheduled.num_new_tokens):
            return ForwardBatch.build_decode(*self.decode_inputs(scheduled.requests), self.device)
        new_tokens, contexts = [], []
        for req, n in zip(scheduled.requests, scheduled.num_new_tokens):
            end = len(req.slots)
            start = end - n
            new_tokens.append(req.token_span(start, end))
            contexts.append(req.slots)
        return ForwardBatch.build(new_tokens, contexts, self.device, all_logits=all_logits)

    @staticmethod
    def decode_inputs(requests: list[Request]) -> tuple[list[int], list[np.ndarray]]:
        """Each request's one new token and the int64 slots of its context, the new token's slot last."""
        tokens = [req.token_at(len(req.slots) - 1) for req in requests]
        return tokens, [req.slot_array.sync(req.slots) for req in requests]

    def run(self, scheduled: ScheduledBatch, input_ids: torch.Tensor | None = None) -> StepLogits:
        """Logits of the scheduled step's last token per request: a captured graph when one fits, else eager.

        ``input_ids``: a decode step's new tokens as a device tensor [B], in
        place of the host's (placeholders while the tokens are computed).
        """
        graphs = self.graphs
        if graphs is not None and len(scheduled.requests) <= graphs.max_batch_size and all(n == 1 for n in scheduled.num_new_tokens):
            return StepLogits(*graphs.replay_decode(*self.decode_inputs(scheduled.requests), input_ids, self.ids_copied))
        batch = self.make_batch(scheduled)
        if input_ids is not None:
            batch.input_ids = input_ids
        return StepLogits(self.forward(batch))

    def read_back(self, ids: torch.Tensor) -> HostIds:
        """Start copying ``ids`` [B] to the host once the work queued so far is done, off the compute stream.

        The copy runs on a stream of its own, so later launches on the compute
        stream never wait for it; ``ids`` must stay unwritten until it is read
        (a CUDA graph's argmax is rewritten only by the replay after next,
        launched after this copy was waited for). One pinned buffer serves
        every copy: the engine reads each copy before it starts the next.
        """
        if ids.device.type != "cuda" or self.readback_stream is None:
            return HostIds(ids)
        n = ids.shape[0]
        if self.pinned_ids is None or self.pinned_ids.shape[0] < n:
            self.pinned_ids = torch.empty(max(n, 256), dtype=torch.int64, pin_memory=True)
            self.ids_copied = torch.cuda.Event()
        host = self.pinned_ids[:n]
        stream = self.readback_stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            host.copy_(ids, non_blocking=True)
            self.ids_copied.record()
        ids.record_stream(stream)
        return HostIds(host, self.ids_copied)

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        if self.graphs is not None and self.graphs.can_run(batch):
            return self.graphs.replay(batch)
        ctx = ForwardContext(batch=batch, k_cache=self.pool.k, v_cache=self.pool.v, attend=self.attend)
        return self.model(ctx)
