"""Expert-load recorder: tokens per (layer, expert) over every forward, and the balance statistics of them.

The MoE block hands each layer's RoutingPlan to ``record``; counts stay on the
plan's device and are added in place (index_add_ on the CPU, Triton on CUDA:
_expert_load_kernel.py), so recording never forces a device sync in the
forward and replays inside a CUDA graph (``stats`` and ``heatmap_png`` read
the counts back). By default the plans of a forward are counted together when
its last MoE layer records, one launch per forward rather than one per layer:
a batch-1 decode step is bound by launches, each costing a microsecond or two
however little it does (the reason SGLang and vLLM fuse small decode kernels).
Load statistics follow the MoE literature: max/mean load (the capacity factor
a layer would need to drop nothing; GShard, Switch), the coefficient of
variation of the load (Shazeer et al., 2017), the entropy of the load
distribution, the share of assignments dropped, and the share of tokens that
reached no expert at all.

Given the model's ``top_k``, "dropped" means assignments short of the nominal
T * top_k, which is right for every router: an expert-choice plan has E
columns, most of them -1 by design, and those are not drops. Without it, every
-1 entry counts as dropped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch
import triton

from moeframe.gpu.pdl import pdl_args
from moeframe.routers.plan import RoutingPlan


def load_stats(counts: torch.Tensor, dropped: int, tokens: int, unrouted: int) -> dict[str, float | int]:
    """Balance statistics of one layer's per-expert counts [E] (float64 on the host)."""
    kept = int(counts.sum())
    assigned = kept + dropped
    num_experts = counts.numel()
    stats: dict[str, float | int] = {
        "kept": kept,
        "dropped": dropped,
        "drop_rate": dropped / assigned if assigned else 0.0,
        "tokens": tokens,
        "unrouted_rate": unrouted / tokens if tokens else 0.0,
    }
    if kept == 0:
        return stats | {"max_mean_load": 0.0, "cv": 0.0, "entropy": 0.0, "entropy_norm": 0.0}
    mean = counts.mean()
    share = counts / kept
    entropy = float(-(share[share > 0] * share[share > 0].log()).sum())
    return stats | {
        "max_mean_load": float(counts.max() / mean),
        "cv": float(counts.std(correction=0) / mean),
        "entropy": entropy,
        "entropy_norm": entropy / math.log(num_experts) if num_experts > 1 else 1.0,
    }


# A program of the CUDA kernel reads this many plan entries at a time; at most
# this many programs share a plan.
ACCUMULATE_TILE = 1024
MAX_ACCUMULATE_PROGRAMS = 256


def _kernels() -> ModuleType:
    # Imported on first use, not with the package: Triton chooses between
    # compiling and interpreting (TRITON_INTERPRET) when a kernel is defined.
    from moeframe.telemetry import _expert_load_kernel

    return _expert_load_kernel


def _capturing(topk_ids: torch.Tensor) -> bool:
    return topk_ids.is_cuda and torch.cuda.is_current_stream_capturing()


class CountTiles(NamedTuple):
    programs: int  # per plan
    clamp_total: bool
    block_t: int
    block_c: int
    num_warps: int


def _count_tiles(num_tokens: int, num_columns: int, budget_k: int) -> CountTiles:
    """The grid and tiles with which the count kernels read one [T, C] plan."""
    block_c = triton.next_power_of_2(num_columns)
    block_t = min(triton.next_power_of_2(num_tokens), max(1, ACCUMULATE_TILE // block_c))
    # a row may keep more than budget_k ids: only one program can clamp the plan's total
    clamp_total = num_columns > budget_k
    programs = 1 if clamp_total else min(-(-num_tokens // block_t), MAX_ACCUMULATE_PROGRAMS)
    return CountTiles(programs, clamp_total, block_t, block_c, 1 if block_t * block_c <= 256 else 4)


def accumulate_fused(
    topk_ids: torch.Tensor,
    counts: torch.Tensor,
    dropped: torch.Tensor,
    tokens: torch.Tensor,
    unrouted: torch.Tensor,
    budget_k: int,
) -> None:
    """``accumulate`` in one Triton launch (the CUDA path)."""
    num_tokens, num_columns = topk_ids.shape
    if num_tokens == 0:
        return
    ids = topk_ids if topk_ids.stride(1) == 1 else topk_ids.contiguous()
    tiles = _count_tiles(num_tokens, num_columns, budget_k)
    _kernels().accumulate_kernel[(tiles.programs,)](
        ids, counts, dropped, tokens, unrouted, num_tokens, num_columns, ids.stride(0), budget_k,
        CLAMP_TOTAL=tiles.clamp_total, BLOCK_T=tiles.block_t, BLOCK_C=tiles.block_c, num_warps=tiles.num_warps,
        **pdl_args(ids),
    )  # fmt: skip


def accumulate(
    topk_ids: torch.Tensor,
    counts: torch.Tensor,
    dropped: torch.Tensor,
    tokens: torch.Tensor,
    unrouted: torch.Tensor,
    budget_k: int,
) -> None:
    """Add one plan's figures to a layer's counters in place (one Triton launch on CUDA)."""
    if topk_ids.is_cuda:
        accumulate_fused(topk_ids, counts, dropped, tokens, unrouted, budget_k)
        return
    kept = topk_ids >= 0
    num_kept = kept.sum()
    counts.index_add_(0, topk_ids.flatten().clamp_min(0), kept.flatten().long())
    dropped += (topk_ids.shape[0] * budget_k - num_kept).clamp_min(0)
    tokens += topk_ids.shape[0]
    unrouted += (~kept.any(dim=1)).sum()


@dataclass(frozen=True)
class LayerPlan:
    """One MoE layer's plan waiting to be counted: its recorder row, its ids [T, C], its budget k."""

    layer_idx: int
    topk_ids: torch.Tensor
    budget_k: int


# The plans one launch of the layers kernel takes: every MoE layer of the models we
# serve (DeepSeek-V3 has 58), so a forward is one launch.
MAX_PLANS_PER_LAUNCH = 64


def _launch_groups(plans: Sequence[LayerPlan]) -> list[list[LayerPlan]]:
    """Plans that can share a launch: same shape, strides, dtype and budget, at most MAX_PLANS_PER_LAUNCH."""
    by_layout: dict[tuple, list[LayerPlan]] = {}
    for plan in plans:
        ids = plan.topk_ids
        if ids.shape[0]:
            by_layout.setdefault((*ids.shape, *ids.stride(), ids.dtype, plan.budget_k), []).append(plan)
    return [
        group[start : start + MAX_PLANS_PER_LAUNCH]
        for group in by_layout.values()
        for start in range(0, len(group), MAX_PLANS_PER_LAUNCH)
    ]


def accumulate_layers_fused(
    plans: Sequence[LayerPlan],
    counts: torch.Tensor,
    dropped: torch.Tensor,
    tokens: torch.Tensor,
    unrouted: torch.Tensor,
    settled: bool = False,
) -> None:
    """Add many layers' plans to the recorder's counters ([L, E] and [L]) in one Triton launch.

    Plans of another shape, dtype or budget than the rest (a forward's
    layers share theirs) take a launch of their own; so do plans past
    MAX_PLANS_PER_LAUNCH. ``settled``: no plan was written by the launch just
    before, so the kernel reads its first ids before its PDL wait and counts
    after it (_expert_load_kernel.py).
    """
    for group in _launch_groups(plans):
        ids = group[0].topk_ids
        (num_tokens, num_columns), budget_k = ids.shape, group[0].budget_k
        tiles = _count_tiles(num_tokens, num_columns, budget_k)
        _kernels().accumulate_layers_kernel[(tiles.programs, len(group))](
            tuple(plan.topk_ids for plan in group), tuple(plan.layer_idx for plan in group),
            counts, dropped, tokens, unrouted, num_tokens, num_columns, *ids.stride(), counts.stride(0), budget_k,
            NUM_PLANS=len(group), CLAMP_TOTAL=tiles.clamp_total, BLOCK_T=tiles.block_t, BLOCK_C=tiles.block_c,
            SETTLED=settled, num_warps=tiles.num_warps, **pdl_args(ids),
        )  # fmt: skip


def accumulate_layers(
    plans: Sequence[LayerPlan],
    counts: torch.Tensor,
    dropped: torch.Tensor,
    tokens: torch.Tensor,
    unrouted: torch.Tensor,
    settled: bool = False,
) -> None:
    """Add many layers' plans to the recorder's counters: one Triton launch on CUDA, ``accumulate`` per plan elsewhere."""
    if counts.is_cuda:
        accumulate_layers_fused(plans, counts, dropped, tokens, unrouted, settled)
        return
    for plan in plans:
        row = slice(plan.layer_idx, plan.layer_idx + 1)
        accumulate(plan.topk_ids, counts[plan.layer_idx], dropped[row], tokens[row], unrouted[row], plan.budget_k)


class ExpertLoadRecorder:
    """Counts of every forward's routing, per (layer, expert), on the plans' device.

    ``batched`` (``runner.batched_load_record``): ``record`` keeps a reference
    to each layer's plan and the record of ``last_moe_layer`` (the last MoE
    layer of a forward; default the last layer) counts them all at once, one
    launch per forward on CUDA instead of one per layer, and still inside the
    forward, so a captured decode step replays it. The references keep the
    ids alive, so a graph's memory pool cannot reuse them before that launch
    reads them; a router must hand over fresh ids each call, never a buffer it
    rewrites for the next layer (every router here allocates them). Reads (``load_counts``, ``stats``, ...) count what is pending
    first. Without ``batched`` each record is counted at once (one launch per
    layer on CUDA).

    A forward that stops before its last MoE layer (an exception) leaves
    plans pending; they are counted once, with the next forward's or at the
    next read, as per-layer recording would have counted them. Plans recorded
    during a CUDA-graph capture are counted only by a launch inside that
    capture: if it ends first (a capture that failed), they are dropped, since
    its kernels never ran.
    """

    def __init__(
        self,
        num_layers: int,
        num_experts: int,
        top_k: int | None = None,
        batched: bool = True,
        last_moe_layer: int | None = None,
    ) -> None:
        last_moe_layer = num_layers - 1 if last_moe_layer is None else last_moe_layer
        if not 0 <= last_moe_layer < num_layers:
            raise ValueError(f"last_moe_layer must be a layer in [0, {num_layers}), got {last_moe_layer}")
        self.num_layers, self.num_experts, self.top_k = num_layers, num_experts, top_k
        self.batched, self.last_moe_layer = batched, last_moe_layer
        self.counts: torch.Tensor | None = None  # [L, E] int64, kept assignments
        self.dropped: torch.Tensor | None = None  # [L] int64, dropped assignments
        self.tokens: torch.Tensor | None = None  # [L] int64, tokens routed
        self.unrouted: torch.Tensor | None = None  # [L] int64, tokens that kept no expert
        self.pending: list[LayerPlan] = []  # batched: plans recorded since the last flush
        self.pending_captured = False  # whether they were recorded during a CUDA-graph capture
        # passes that serve no request (scoring, warm-up), counted apart: phase -> kept assignments [L, E], tokens [L]
        self.apart: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(self, layer_idx: int, plan: RoutingPlan) -> None:
        if self.counts is None:
            device = plan.topk_ids.device
            self.counts = torch.zeros(self.num_layers, self.num_experts, dtype=torch.long, device=device)
            self.dropped, self.tokens, self.unrouted = (
                torch.zeros(self.num_layers, dtype=torch.long, device=device) for _ in range(3)
            )
        # The budget is k assignments per token: the plan's own width (top-1 asks for 1), but at
        # most the model's k, so an expert-choice plan's E columns are not all counted as drops.
        columns = plan.topk_ids.shape[1]
        budget_k = columns if self.top_k is None else min(columns, self.top_k)
        if not self.batched:
            accumulate(
                plan.topk_ids, self.counts[layer_idx], self.dropped[layer_idx : layer_idx + 1],
                self.tokens[layer_idx : layer_idx + 1], self.unrouted[layer_idx : layer_idx + 1], budget_k,
            )  # fmt: skip
            return
        captured = _capturing(plan.topk_ids)
        # layers come in order within a forward: a layer at or before the last pending one starts a new forward
        if self.pending and (layer_idx <= self.pending[-1].layer_idx or captured != self.pending_captured):
            self._settle_unfinished_forward()
        self.pending.append(LayerPlan(layer_idx, plan.topk_ids, budget_k))
        self.pending_captured = captured
        if layer_idx == self.last_moe_layer:
            self.flush(settled=True)

    def flush(self, settled: bool = False) -> None:
        """Count the pending plans: one launch on CUDA (see the class docstring for the plans it drops).

        ``settled``: the last plan's experts have run since it was recorded,
        so no plan comes from the launch just before (the MoE block records
        after its experts), and the launch reads the ids beside the one before it.
        """
        if not self.pending:
            return
        capturing = _capturing(self.pending[0].topk_ids)
        if capturing and not self.pending_captured:
            raise RuntimeError(
                f"expert-load recorder: {len(self.pending)} layer(s) recorded before this CUDA-graph capture "
                "were never counted; call flush() before capturing"
            )
        plans, self.pending = self.pending, []
        if self.pending_captured and not capturing:
            return
        accumulate_layers(plans, self.counts, self.dropped, self.tokens, self.unrouted, settled)

    def _settle_unfinished_forward(self) -> None:
        """Plans of a forward that never reached its last MoE layer: counted if they ran eagerly.

        Captured ones may come from a capture that failed (their kernels never
        ran, their memory went back to the pool): a launch now would read
        whatever lies there, so they are dropped.
        """
        if self.pending_captured:
            self.pending = []
        else:
            self.flush()

    def reset(self) -> None:
        self.pending = []
        self.counts = self.dropped = self.tokens = self.unrouted = None
        self.apart = {}

    def _live(self) -> list[torch.Tensor]:
        return [self.counts, self.dropped, self.tokens, self.unrouted]

    def _add_apart(self, phase: str, counts: torch.Tensor, tokens: torch.Tensor) -> None:
        kept, seen = self.apart.get(phase, (0, 0))
        self.apart[phase] = (kept + counts.cpu(), seen + tokens.cpu())

    def set_aside(self, phase: str) -> None:
        """Move all counted so far to ``apart[phase]`` (warm-up) and zero the counters in place.

        In place, not ``reset``: captured CUDA graphs keep adding into these tensors.
        """
        self.flush()
        if self.counts is None:
            return
        self._add_apart(phase, self.counts, self.tokens)
        with torch.inference_mode():  # the counters were made inside it
            for live in self._live():
                live.zero_()

    @contextmanager
    def counted_apart(self, phase: str) -> Iterator[None]:
        """Count the forwards run inside as ``phase`` (scoring), not as served: their counts move to ``apart``."""
        self.flush()
        before = None if self.counts is None else [t.clone() for t in self._live()]
        try:
            yield
        finally:
            self.flush()
            if self.counts is not None:
                before = before or [torch.zeros_like(t) for t in self._live()]
                self._add_apart(phase, self.counts - before[0], self.tokens - before[2])
                with torch.inference_mode():
                    for live, old in zip(self._live(), before):
                        live.copy_(old)

    def load_counts(self) -> torch.Tensor:
        """Kept assignments per (layer, expert), [L, E] int64 on the host."""
        self.flush()
        if self.counts is None:
            return torch.zeros(self.num_layers, self.num_experts, dtype=torch.long)
        return self.counts.cpu()

    def dropped_counts(self) -> torch.Tensor:
        """Dropped assignments per layer, [L] int64 on the host."""
        return self._on_host(self.dropped)

    def _on_host(self, counter: torch.Tensor | None) -> torch.Tensor:
        self.flush()
        return torch.zeros(self.num_layers, dtype=torch.long) if counter is None else counter.cpu()

    def stats(self) -> dict:
        """Per recorded layer and in total.

        Each layer: kept, dropped, drop_rate, tokens, unrouted_rate,
        max_mean_load, cv, entropy (nats), entropy_norm (entropy / log E, 1 =
        balanced). ``total`` pools kept, dropped and unrouted over layers (and
        gives experts_per_token: the mean experts a token visited in a layer) and
        takes the worst (largest) max_mean_load and the mean cv and entropy_norm.
        """
        counts, dropped = self.load_counts().double(), self.dropped_counts()
        tokens, unrouted = self._on_host(self.tokens), self._on_host(self.unrouted)
        layers = []
        for layer in range(self.num_layers):
            if tokens[layer] == 0:
                continue
            stats = load_stats(counts[layer], int(dropped[layer]), int(tokens[layer]), int(unrouted[layer]))
            layers.append({"layer": layer} | stats)
        kept_total, dropped_total = int(counts.sum()), int(dropped.sum())
        assigned, tokens_total = kept_total + dropped_total, int(tokens.sum())
        total = {
            "kept": kept_total,
            "dropped": dropped_total,
            "drop_rate": dropped_total / assigned if assigned else 0.0,
            "unrouted_rate": int(unrouted.sum()) / tokens_total if tokens_total else 0.0,
            "experts_per_token": kept_total / tokens_total if tokens_total else 0.0,
            "max_mean_load": max((s["max_mean_load"] for s in layers), default=0.0),
            "mean_cv": sum(s["cv"] for s in layers) / len(layers) if layers else 0.0,
            "mean_entropy_norm": sum(s["entropy_norm"] for s in layers) / len(layers) if layers else 0.0,
        }
        apart = {phase: {"kept": int(kept.sum()), "tokens": int(tokens.sum())} for phase, (kept, tokens) in self.apart.items()}
        return {"layers": layers, "total": total, "counted_apart": apart}

    def heatmap_png(self, path: str | Path) -> Path:
        """Write a layer x expert heatmap of load / mean load (1 = balanced) to ``path``."""
        # the Agg canvas renders without touching pyplot's global backend
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        counts = self.load_counts().double()
        mean = counts.mean(dim=1, keepdim=True)
        ratio = torch.where(mean > 0, counts / mean.clamp_min(1e-12), 0.0).numpy()
        fig = Figure(figsize=(max(4.0, 0.18 * self.num_experts + 2), max(3.0, 0.22 * self.num_layers + 1.5)), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        image = ax.imshow(ratio, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, label="load / mean load")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.set_title("expert load")
        path = Path(path)
        fig.savefig(path, dpi=100)
        return path
