"""Expert-load recorder: tokens per (layer, expert) over every forward, and the balance statistics of them.

The MoE block hands each layer's RoutingPlan to ``record``; counts stay on the
plan's device and are added in place (index_add_ on the CPU, one Triton
launch on CUDA: _expert_load_kernel.py), so recording never forces a device
sync in the forward and replays inside a CUDA graph (``stats`` and
``heatmap_png`` read the counts back).
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
from pathlib import Path
from types import ModuleType

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
    block_c = triton.next_power_of_2(num_columns)
    block_t = min(triton.next_power_of_2(num_tokens), max(1, ACCUMULATE_TILE // block_c))
    # a row may keep more than budget_k ids: only one program can clamp the plan's total
    clamp_total = num_columns > budget_k
    programs = 1 if clamp_total else min(-(-num_tokens // block_t), MAX_ACCUMULATE_PROGRAMS)
    _kernels().accumulate_kernel[(programs,)](
        ids, counts, dropped, tokens, unrouted, num_tokens, num_columns, ids.stride(0), budget_k,
        CLAMP_TOTAL=clamp_total, BLOCK_T=block_t, BLOCK_C=block_c,
        num_warps=1 if block_t * block_c <= 256 else 4, **pdl_args(ids),
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


class ExpertLoadRecorder:
    def __init__(self, num_layers: int, num_experts: int, top_k: int | None = None) -> None:
        self.num_layers, self.num_experts, self.top_k = num_layers, num_experts, top_k
        self.counts: torch.Tensor | None = None  # [L, E] int64, kept assignments
        self.dropped: torch.Tensor | None = None  # [L] int64, dropped assignments
        self.tokens: torch.Tensor | None = None  # [L] int64, tokens routed
        self.unrouted: torch.Tensor | None = None  # [L] int64, tokens that kept no expert

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
        accumulate(
            plan.topk_ids, self.counts[layer_idx], self.dropped[layer_idx : layer_idx + 1],
            self.tokens[layer_idx : layer_idx + 1], self.unrouted[layer_idx : layer_idx + 1], budget_k,
        )  # fmt: skip

    def reset(self) -> None:
        self.counts = self.dropped = self.tokens = self.unrouted = None

    def load_counts(self) -> torch.Tensor:
        """Kept assignments per (layer, expert), [L, E] int64 on the host."""
        if self.counts is None:
            return torch.zeros(self.num_layers, self.num_experts, dtype=torch.long)
        return self.counts.cpu()

    def dropped_counts(self) -> torch.Tensor:
        """Dropped assignments per layer, [L] int64 on the host."""
        return self._on_host(self.dropped)

    def _on_host(self, counter: torch.Tensor | None) -> torch.Tensor:
        return torch.zeros(self.num_layers, dtype=torch.long) if counter is None else counter.cpu()

    def stats(self) -> dict:
        """Per recorded layer and in total.

        Each layer: kept, dropped, drop_rate, tokens, unrouted_rate,
        max_mean_load, cv, entropy (nats), entropy_norm (entropy / log E, 1 =
        balanced). ``total`` pools kept, dropped and unrouted over layers and
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
            "max_mean_load": max((s["max_mean_load"] for s in layers), default=0.0),
            "mean_cv": sum(s["cv"] for s in layers) / len(layers) if layers else 0.0,
            "mean_entropy_norm": sum(s["entropy_norm"] for s in layers) / len(layers) if layers else 0.0,
        }
        return {"layers": layers, "total": total}

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
