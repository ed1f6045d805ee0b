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

With ``runner.routes`` the MoE layers write each step's routes into the
runner's RouteBuffer (model/layers/routes.py), eager and captured steps
alike; ``read_back_routes`` copies them to the host on the same side
stream. A router that follows given routes (``router=replay``) gets each
step's rows of them from its requests (``replay_inputs``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
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
from moeframe.model.layers.routes import RouteBuffer, StepRoutes


@dataclass
class StepLogits:
    logits: torch.Tensor  # [B, V] float32, one row per scheduled request
    argmax: torch.Tensor | None = None  # [B] logits.argmax(-1), when the CUDA graph computed it already
    routes: RoutesOnDevice | None = None  # the step's routes, when the runner records them


@dataclass
class RoutesOnDevice:
    """A step's routes in one half of the RouteBuffer: ids [T, L, k] and weights (or None)."""

    ids: torch.Tensor
    weights: torch.Tensor | None
    half: int


class HostRoutes:
    """A step's routes on their way to the host; ``wait`` returns them once copied."""

    def __init__(self, ids: torch.Tensor, weights: torch.Tensor | None, copied: torch.cuda.Event | None = None) -> None:
        self.ids, self.weights, self.copied = ids, weights, copied

    def wait(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.copied is not None:
            self.copied.synchronize()
        return self.ids, self.weights


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
        self,
        model: CausalLM,
        pool: KVPool,
        device: torch.device,
        attention: str = "auto",
        overlap: bool = True,
        routes: RouteBuffer | None = None,
        replays_routes: bool = False,
        forward: Callable[[CausalLM, ForwardContext], torch.Tensor] | None = None,
    ) -> None:
        """``forward``: how an eager step runs the model over the ranks (``ParallelStrategy.forward``); default ``model(ctx)``."""
        self.model, self.pool, self.device = model, pool, device
        self.run_model = forward or CausalLM.__call__
        self.attend = get_attention_backend(attention, device)
        self.graphs: CudaGraphRunner | None = None
        self.overlap = overlap  # whether the engine may launch a decode step before reading the last one's tokens
        self.pinned_ids: torch.Tensor | None = None
        self.ids_copied: torch.cuda.Event | None = None
        self.readback_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.routes = routes  # where each step's routes go (runner.routes), or None
        self.replays_routes = replays_routes  # whether the routers follow routes given per request
        self.moe_index = {i: j for j, i in enumerate(i for i, sparse in enumerate(model.spec.sparse_layers) if sparse)}
        self.routes_half = 1  # the RouteBuffer half the last step wrote
        self.routes_copied = [torch.cuda.Event() for _ in range(2)] if routes is not None and device.type == "cuda" else None
        self.pinned_routes: list[torch.Tensor | None] = [None, None]  # ids, weights

    def capture_cuda_graphs(self, batch_sizes: list[int], max_context: int) -> None:
        """Capture decode for these batch sizes (CUDA only); later decode steps replay them.

        A kernel that syncs with the host (the reference expert loop) cannot be
        captured: the runner then stays eager and says so.
        """
        try:
            self.graphs = CudaGraphRunner(
                self.model, self.pool, self.attend, batch_sizes, max_context, self.device, self.routes, self.moe_index
            )
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
            half = self.take_routes_half(graphs.side)  # the graph of buffer s writes routes half s
            out = graphs.replay_decode(*self.decode_inputs(scheduled.requests), input_ids, self.ids_copied)
            return StepLogits(*out, routes=self.step_routes_out(half, len(scheduled.requests)))
        batch = self.make_batch(scheduled)
        if input_ids is not None:
            batch.input_ids = input_ids
        replay = self.replay_inputs(scheduled) if self.replays_routes else None
        if self.routes is None and replay is None:
            return StepLogits(self.forward(batch))
        half = self.take_routes_half(1 - self.routes_half) if self.routes is not None else 0
        logits = self.forward(batch, StepRoutes(self.moe_index, self.routes, replay))
        return StepLogits(logits, routes=self.step_routes_out(half, batch.num_tokens))

    def take_routes_half(self, half: int) -> int:
        """Let the next step write RouteBuffer half ``half`` once the last copy out of it is done."""
        if self.routes is None:
            return half
        if self.routes_copied is not None:
            torch.cuda.current_stream().wait_event(self.routes_copied[half])
        self.routes.use(half)
        self.routes_half = half
        return half

    def step_routes_out(self, half: int, num_tokens: int) -> RoutesOnDevice | None:
        if self.routes is None:
            return None
        return RoutesOnDevice(*self.routes.view(half, num_tokens), half)

    def replay_inputs(self, scheduled: ScheduledBatch) -> torch.Tensor | None:
        """The step's routes to follow [T, L, k] from its requests' ``replay_ids``; None if no request gives any.

        A token past a request's given routes gets a row of -1 (routed natively).
        """
        given = [req.replay_ids for req in scheduled.requests]
        if all(ids is None for ids in given):
            return None
        width = next(ids for ids in given if ids is not None).shape[1:]
        rows = []
        for req, ids, n in zip(scheduled.requests, given, scheduled.num_new_tokens):
            start = len(req.slots) - n
            part = torch.full((n, *width), -1, dtype=torch.int64)
            if ids is not None and start < ids.shape[0]:
                taken = ids[start : start + n]
                part[: taken.shape[0]] = taken
            rows.append(part)
        return torch.cat(rows).to(self.device, non_blocking=True)

    def read_back_routes(self, routes: RoutesOnDevice) -> HostRoutes:
        """Start copying a step's routes to the host, off the compute stream (as ``read_back``).

        The next step that writes the same half waits for this copy
        (``take_routes_half``); on the CPU the routes are cloned, since the
        next step writes over them before the host stores these.
        """
        if routes.ids.device.type != "cuda" or self.readback_stream is None:
            return HostRoutes(routes.ids.clone(), None if routes.weights is None else routes.weights.clone())
        hosts = []
        for i, tensor in enumerate((routes.ids, routes.weights)):
            if tensor is None:
                hosts.append(None)
                continue
            pinned = self.pinned_routes[i]
            if pinned is None:  # one half of the buffer: the most any step copies, so never reallocated
                half_size = self.routes.ids[0].numel()
                pinned = self.pinned_routes[i] = torch.empty(half_size, dtype=tensor.dtype, pin_memory=True)
            hosts.append(pinned[: tensor.numel()].view(tensor.shape))
        stream = self.readback_stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for host, tensor in zip(hosts, (routes.ids, routes.weights)):
                if tensor is not None:
                    host.copy_(tensor, non_blocking=True)
            self.routes_copied[routes.half].record()
        return HostRoutes(hosts[0], hosts[1], self.routes_copied[routes.half])

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
    def forward(self, batch: ForwardBatch, routes: StepRoutes | None = None) -> torch.Tensor:
        """Logits of a batch; ``routes``: what the forward records and follows (a served step's; None for scoring)."""
        if routes is None and self.graphs is not None and self.graphs.can_run(batch):
            return self.graphs.replay(batch)
        ctx = ForwardContext(batch=batch, k_cache=self.pool.k, v_cache=self.pool.v, attend=self.attend, routes=routes)
        return self.run_model(self.model, ctx)
