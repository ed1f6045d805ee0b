"""Expert-load recorder: tokens per (layer, expert) over every forward, and the balance statistics of them.

The MoE block hands each layer's RoutingPlan to ``record``; counts stay on the
plan's device and are added with index_add_, so recording never forces a
device sync in the forward (``stats`` and ``heatmap_png`` read them back).
Load statistics follow the MoE literature: max/mean load (the capacity factor
a layer would need to drop nothing; GShard, Switch), the coefficient of
variation of the load (Shazeer et al., 2017), the entropy of the load
distribution, and the share of assignments dropped.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from moeframe.routers.plan import RoutingPlan


def load_stats(counts: torch.Tensor, dropped: int) -> dict[str, float | int]:
    """Balance statistics of one layer's per-expert counts [E] (float64 on the host)."""
    kept = int(counts.sum())
    assigned = kept + dropped
    num_experts = counts.numel()
    stats: dict[str, float | int] = {"kept": kept, "dropped": dropped, "drop_rate": dropped / assigned if assigned else 0.0}
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


class ExpertLoadRecorder:
    def __init__(self, num_layers: int, num_experts: int) -> None:
        self.num_layers, self.num_experts = num_layers, num_experts
        self.counts: torch.Tensor | None = None  # [L, E] int64, kept assignments
        self.dropped: torch.Tensor | None = None  # [L] int64, dropped assignments

    def record(self, layer_idx: int, plan: RoutingPlan) -> None:
        if self.counts is None:
            device = plan.topk_ids.device
            self.counts = torch.zeros(self.num_layers, self.num_experts, dtype=torch.long, device=device)
            self.dropped = torch.zeros(self.num_layers, dtype=torch.long, device=device)
        kept = plan.kept.flatten()
        self.counts[layer_idx].index_add_(0, plan.topk_ids.flatten().clamp_min(0), kept.long())
        self.dropped[layer_idx] += (~kept).sum()

    def reset(self) -> None:
        self.counts = self.dropped = None

    def load_counts(self) -> torch.Tensor:
        """Kept assignments per (layer, expert), [L, E] int64 on the host."""
        if self.counts is None:
            return torch.zeros(self.num_layers, self.num_experts, dtype=torch.long)
        return self.counts.cpu()

    def dropped_counts(self) -> torch.Tensor:
        """Dropped assignments per layer, [L] int64 on the host."""
        return torch.zeros(self.num_layers, dtype=torch.long) if self.dropped is None else self.dropped.cpu()

    def stats(self) -> dict:
        """Per recorded layer and in total: kept, dropped, drop_rate, max_mean_load, cv, entropy, entropy_norm.

        ``total`` sums kept and dropped over layers and takes the worst
        (largest) max_mean_load and the mean cv and entropy_norm of the layers.
        """
        counts, dropped = self.load_counts().double(), self.dropped_counts()
        layers = []
        for layer in range(self.num_layers):
            if counts[layer].sum() + dropped[layer] == 0:
                continue
            layers.append({"layer": layer} | load_stats(counts[layer], int(dropped[layer])))
        kept_total, dropped_total = int(counts.sum()), int(dropped.sum())
        assigned = kept_total + dropped_total
        total = {
            "kept": kept_total,
            "dropped": dropped_total,
            "drop_rate": dropped_total / assigned if assigned else 0.0,
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
