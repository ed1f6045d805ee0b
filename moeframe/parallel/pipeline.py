"""parallel=pipeline: layers split over ranks in stages, each step run as micro-batches that flow through them.

Stage s holds a contiguous range of layers (balanced by parameter bytes, or
``split``), the first stage the embedding and the last the final norm and LM
head; a rank keeps KV only for its own layers. Every rank runs the same
scheduler over the same batches, as under tensor and expert parallelism, so
no request state crosses ranks: a forward step cuts its requests into
micro-batches (stages.py), the first stage embeds and runs micro-batch m,
sends the residual stream on with a non-blocking send and starts m+1 while
the next stage runs m (GPipe's fill-and-drain schedule, Huang et al., 2019,
forward only; vLLM and SGLang also split models by layer ranges). The last
stage's logits are broadcast so every rank samples the same tokens. The
pipeline fills and drains inside each step, so with S stages and M
micro-batches a stage idles (S-1)/(M+S-1) of the step at equal stage times;
vLLM's virtual engines and SGLang's PP event loop keep S independent batches
in flight instead, which needs S schedulers and is not done here.

With ``ep_size=e`` the W ranks form a [W/e, e] grid: the e consecutive ranks
of a stage split its routed experts (expert parallel, dispatch.py) and run
its attention replicated; rank (s, i) sends to rank (s+1, i). Consecutive
ranks share a node on a GPU cluster, so the heavy all-to-alls stay inside it
and only the light stage-to-stage sends cross nodes.

Per-layer telemetry stays per rank: the expert-load recorder of a rank
counts its stage's layers only, so a run's summary (rank 0) reports the
first stage's. Recording routes (``runner.routes``) needs every MoE layer
on one rank and is refused; routes to follow (``router=replay``) are cut
per micro-batch.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist

from moeframe.errors import ConfigError
from moeframe.model.causal_lm import CausalLM, HeldElsewhere
from moeframe.model.layers.context import ForwardContext
from moeframe.model.layers.moe import ExpertRunner, LocalExperts, MoEBlock
from moeframe.model.layers.topk_sum import reduced
from moeframe.model.spec import ModelSpec
from moeframe.parallel import PARALLEL
from moeframe.parallel.base import ParallelStrategy
from moeframe.parallel.comm import Comm, CommMeter
from moeframe.parallel.dispatch import ExpertParallelRunner
from moeframe.parallel.distributed import init_distributed
from moeframe.parallel.expert import keep_experts
from moeframe.parallel.placement import contiguous_placement
from moeframe.parallel.slicing import WeightSlicer
from moeframe.parallel.stages import balanced_split, layer_parameters, micro_batch_bounds, split_bounds, stage_costs


@dataclass
class PipelineParams:
    ep_size: int = 1  # expert-parallel ranks inside each stage (must divide the world size)
    split: list[int] | None = None  # layers per stage, first to last; null: balanced by parameter bytes
    micro_batches: int | None = None  # micro-batches per forward step (at most one per request); null: one per stage
    time_comm: bool = True  # synchronise around the logits broadcast and the all-to-alls on CUDA to time them

    def __post_init__(self) -> None:
        if self.ep_size < 1:
            raise ValueError(f"ep_size must be >= 1, got {self.ep_size}")
        if self.micro_batches is not None and self.micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {self.micro_batches}")


class StageObserver(Protocol):
    """Told when this rank's stage starts a micro-batch (its input is here) and when its layers are done with it."""

    def __call__(self, stage: int, micro_batch: int, event: str) -> None: ...


def stage_layout(spec: ModelSpec, num_stages: int, split: list[int] | None) -> list[tuple[int, int]]:
    """[lo, hi) layers of each stage; a bad split or too few layers fails at start."""
    if num_stages > spec.num_layers:
        raise ConfigError(
            f"parallel=pipeline: {num_stages} stages but the model has {spec.num_layers} layers; "
            "use fewer ranks or parallel.ep_size>1 (stages = world size / ep_size)"
        )
    if split is None:
        table = spec.vocab_size * spec.hidden_size
        weights = [layer_parameters(spec, i) for i in range(spec.num_layers)]
        split = balanced_split(weights, num_stages, table, spec.hidden_size + table)
    elif len(split) != num_stages or sum(split) != spec.num_layers or min(split) < 1:
        raise ConfigError(
            f"parallel.split={list(split)}: needs {num_stages} stages (world size / ep_size) of >= 1 layer "
            f"summing to the model's {spec.num_layers} layers"
        )
    return split_bounds(list(split))


def micro_context(ctx: ForwardContext, lo: int, hi: int) -> ForwardContext:
    """The step's context for requests ``lo:hi``: their batch, and their rows of any routes to follow."""
    batch = ctx.batch.select_requests(lo, hi)
    routes = ctx.routes
    if routes is not None and routes.replay is not None:
        start = sum(ctx.batch.q_lens[:lo])
        routes = dataclasses.replace(routes, replay=routes.replay[start : start + batch.num_tokens])
    return dataclasses.replace(ctx, batch=batch, routes=routes)


@PARALLEL.register("pipeline", params=PipelineParams)
class PipelineParallel(ParallelStrategy):
    name = "pipeline"
    cuda_graph_safe = False  # a step is a host loop of sends and receives over micro-batches

    def __init__(
        self,
        params: PipelineParams,
        spec: ModelSpec,
        device: torch.device,
        batch_dependent_routing: bool = False,
        records_routes: bool = False,
        **_: object,
    ) -> None:
        world = init_distributed(device)
        self.rank, self.world_size, self.ep_size = world.rank, world.world_size, params.ep_size
        if self.world_size % self.ep_size:
            raise ConfigError(f"parallel.ep_size={self.ep_size} does not divide the world size ({self.world_size})")
        self.num_stages = self.world_size // self.ep_size
        self.micro_batches = params.micro_batches or self.num_stages
        if batch_dependent_routing and self.micro_batches > 1:
            raise ConfigError(
                "parallel=pipeline: a batch-dependent router would route each micro-batch apart, changing its choices; "
                "set parallel.micro_batches=1 or use a per-token router"
            )
        if records_routes:
            raise ConfigError(
                "parallel=pipeline: runner.routes records every MoE layer's routes of a step on one rank, "
                "but each stage runs only its own layers; set runner.routes=false"
            )
        if self.ep_size > 1 and not spec.is_moe:
            raise ConfigError(f"parallel.ep_size={self.ep_size} needs an MoE model; {spec.family} has no routed experts")
        if spec.is_moe and self.ep_size > spec.moe.num_experts:
            raise ConfigError(f"parallel.ep_size={self.ep_size} exceeds the model's {spec.moe.num_experts} experts")
        self.bounds = stage_layout(spec, self.num_stages, params.split)
        self.stage = self.rank // self.ep_size
        self.layers = range(*self.bounds[self.stage])
        self.is_first, self.is_last = self.stage == 0, self.stage == self.num_stages - 1
        self.prev_rank, self.next_rank = self.rank - self.ep_size, self.rank + self.ep_size
        self.logits_source = (self.num_stages - 1) * self.ep_size  # the last stage's first rank
        self.vocab_size, self.tied = spec.vocab_size, spec.tie_word_embeddings
        self.stage_parameters = stage_costs(spec, self.bounds)

        meter = CommMeter(params.time_comm)
        self.comm = Comm(None, meter)
        self.ep_comm = Comm(self._stage_group(), meter) if self.ep_size > 1 else None
        sparse = [i for i in self.layers if spec.is_moe and spec.sparse_layers[i]]
        self.rank_load = torch.zeros(spec.num_layers, self.ep_size, dtype=torch.long, device=device)
        self.placement = contiguous_placement(spec.moe.num_experts, self.ep_size) if spec.is_moe else None
        self.runners: dict[int, ExpertRunner] = {i: LocalExperts() for i in range(spec.num_layers)}
        if self.ep_comm is not None:
            for i in sparse:
                self.runners[i] = ExpertParallelRunner(self.placement, self.ep_comm, self.rank_load[i])
        self.observer: StageObserver | None = None
        self.steps, self.forward_seconds, self.busy_seconds, self.micro_batch_count = 0, 0.0, 0.0, 0

    def _stage_group(self) -> dist.ProcessGroup:
        """This stage's expert-parallel group; every rank creates every group, in the same order."""
        groups = [list(range(s * self.ep_size, (s + 1) * self.ep_size)) for s in range(self.num_stages)]
        group, _ = dist.new_subgroups_by_enumeration(groups)
        return group

    def expert_runner(self, layer_idx: int) -> ExpertRunner:
        return self.runners[layer_idx]

    def holds_layer(self, layer_idx: int) -> bool:
        return layer_idx in self.layers

    def shard(self, model: CausalLM) -> WeightSlicer:
        """Other stages' layers, and the embedding / head where this stage does not use them, become placeholders."""
        elsewhere = []
        for i, layer in enumerate(model.layers):
            if i not in self.layers:
                model.layers[i] = HeldElsewhere()
                elsewhere.append(f"layers.{i}.")
            elif self.ep_comm is not None and isinstance(layer.mlp, MoEBlock):
                keep_experts(layer.mlp, self.placement.rank_experts[self.ep_comm.rank])
        # tied embeddings are one tensor: a stage that keeps either keeps both
        keeps_embed = self.is_first or (self.is_last and self.tied)
        keeps_head = self.is_last or (self.is_first and self.tied)
        for name, keep in (("embed_tokens", keeps_embed), ("lm_head", keeps_head), ("norm", self.is_last)):
            if not keep:
                setattr(model, name, HeldElsewhere())
                elsewhere.append(f"{name}.")
        return WeightSlicer.of(model, tuple(elsewhere))

    def forward(self, model: CausalLM, ctx: ForwardContext) -> torch.Tensor:
        """This stage's layers over each micro-batch in turn, sends left in flight; the last stage's logits on every rank."""
        start = time.perf_counter()
        batch = ctx.batch
        parts = micro_batch_bounds(batch.q_lens, self.micro_batches)
        micro = [micro_context(ctx, lo, hi) for lo, hi in parts]
        inbox = [] if self.is_first else [self._post_recv(model, c) for c in micro]
        sends, outs = [], []
        for m, mctx in enumerate(micro):
            if self.is_first:
                h, residual = model.embed_tokens(mctx.batch.input_ids), None
            else:
                work, stream = inbox[m]
                work.wait()
                h, residual = stream[0], stream[1]
            began = time.perf_counter()
            self._tell(m, "start")
            h, residual = model.run_layers(h, residual, mctx, self.layers)
            if self.is_last:
                outs.append(model.logits(h, residual, mctx))
            self.busy_seconds += time.perf_counter() - began
            self._tell(m, "done")
            if not self.is_last:
                stream = torch.stack([reduced(h), residual])
                sends.append((self.comm.send_async(stream, self.next_rank), stream))
        for work, _ in sends:
            work.wait()
        rows = batch.logits_indices.shape[0]
        logits = torch.cat(outs) if self.is_last else torch.empty(rows, self.vocab_size, device=batch.input_ids.device)
        self.comm.broadcast(logits, self.logits_source)
        self.steps += 1
        self.micro_batch_count += len(parts)
        self.forward_seconds += time.perf_counter() - start
        return logits

    def _post_recv(self, model: CausalLM, ctx: ForwardContext) -> tuple[dist.Work, torch.Tensor]:
        """A receive posted for the residual stream (layer output and residual, [2, N, H]) of one micro-batch."""
        norm = model.layers[self.layers.start].input_layernorm.weight
        stream = torch.empty(2, ctx.batch.num_tokens, norm.shape[0], dtype=norm.dtype, device=norm.device)
        return self.comm.recv_async(stream, self.prev_rank), stream

    def _tell(self, micro_batch: int, event: str) -> None:
        if self.observer is not None:
            self.observer(self.stage, micro_batch, event)

    def stats(self) -> dict[str, Any]:
        summary = self.comm.meter.summary()
        steps = max(self.steps, 1)
        out = super().stats() | {
            "stage": self.stage,
            "num_stages": self.num_stages,
            "ep_size": self.ep_size,
            "stage_layers": [list(b) for b in self.bounds],
            "stage_parameters": self.stage_parameters,
            "forward_steps": self.steps,
            "micro_batches_per_step": self.micro_batch_count / steps,
            # the share of forward time this stage computed; the rest it waited for inputs, sends and the broadcast
            "stage_busy_share": self.busy_seconds / self.forward_seconds if self.forward_seconds > 0 else 0.0,
            "bytes_sent": summary["bytes_sent"],
            "bytes_sent_per_step": {k: v / steps for k, v in summary["bytes_sent"].items()},
            "collective_calls": summary["calls"],
        }
        if self.ep_comm is not None:
            out["rank_load"] = self.rank_load.sum(dim=0).tolist()
        return out
