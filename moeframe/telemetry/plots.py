"""One PNG over a set of recorded runs: throughput by run, throughput against batch size when a sweep
varies it, cache hit rate by workload when there is one, quality cost (KL vs native) against experts
per token when runs measured both (the routing axes), and the expert-load heatmaps side by side.

Heatmaps share one colour scale (load / mean load of the layer, 1 =
balanced) so that routers can be compared by eye, as in the load figures of
the Switch Transformer and DeepSeek-V3 papers. Matplotlib's Agg canvas is
used directly, so plotting never touches pyplot's global state.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from moeframe.telemetry.comparison import differs, varying_columns
from moeframe.telemetry.runs import RunRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec

BATCH_KEYS = ("workload.batch_size", "workload.num_requests", "workload.max_concurrency", "scheduler.max_running")
HEATMAPS_PER_ROW = 4
# the routing-axes panel: quality cost (router_fidelity) against the experts a token used (expert-load recorder)
QUALITY = "kl_vs_native"
EXPERTS_PER_TOKEN = "expert_load_experts_per_token"
HEATMAP_HEIGHT = 2.4  # inches per row of heatmaps


def run_labels(runs: list[RunRecord]) -> list[str]:
    """Each run named by what tells it apart (the varying groups and leaves), else by its folder."""
    group_cols, leaf_cols = varying_columns(runs)
    shown = [g for g in group_cols if differs([r.choice(g) for r in runs])]
    labels = []
    for run in runs:
        parts = [str(run.choice(g)) for g in shown] + [f"{k.rsplit('.', 1)[-1]}={run.value(k)}" for k in leaf_cols]
        labels.append(" ".join(parts) or run.name)
    if differs(labels):
        return labels
    return [f"{label} ({run.name})" for label, run in zip(labels, runs)]


def batch_key(runs: list[RunRecord]) -> str | None:
    _, leaf_cols = varying_columns(runs)
    for key in BATCH_KEYS:
        if key in leaf_cols:
            return key
    return next((k for k in leaf_cols if "batch" in k.rsplit(".", 1)[-1]), None)


def load_ratio(counts: list[list[int]]) -> np.ndarray:
    matrix = np.asarray(counts, dtype=np.float64)
    mean = matrix.mean(axis=1, keepdims=True)
    return np.divide(matrix, mean, out=np.zeros_like(matrix), where=mean > 0)


def comparison_png(runs: list[RunRecord], path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = run_labels(runs)
    key = batch_key(runs)
    hit_rates = [r.metrics.get("cache_hit_rate") for r in runs]
    show_hits = any(h for h in hit_rates) or differs([r.choice("workload") for r in runs])
    heat = [(label, run.expert_load_counts()) for label, run in zip(labels, runs) if run.expert_load_counts()]
    show_quality = any(QUALITY in r.metrics and EXPERTS_PER_TOKEN in r.metrics for r in runs)
    top_panels = 1 + (key is not None) + show_hits + show_quality
    heat_rows = (len(heat) + HEATMAPS_PER_ROW - 1) // HEATMAPS_PER_ROW
    top_height = 2.0 + 0.3 * len(runs)
    width = max(5.5 * top_panels, 3.2 * min(len(heat), HEATMAPS_PER_ROW) + 1.0, 6.0)
    fig = Figure(figsize=(width, top_height + HEATMAP_HEIGHT * heat_rows), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1 + heat_rows, 1, height_ratios=[top_height] + [HEATMAP_HEIGHT] * heat_rows)
    top = grid[0].subgridspec(1, top_panels)
    panel = iter(range(top_panels))

    ax = fig.add_subplot(top[next(panel)])
    throughput = [r.metrics.get("throughput_tok_s") or 0.0 for r in runs]
    ax.barh(range(len(runs)), throughput, color="tab:blue")
    ax.set_yticks(range(len(runs)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("generated tokens / s")
    ax.set_title("throughput by run")

    if key is not None:
        draw_batch_curve(fig.add_subplot(top[next(panel)]), runs, labels, key)
    if show_hits:
        draw_hit_rates(fig.add_subplot(top[next(panel)]), runs)
    if show_quality:
        draw_quality_cost(fig.add_subplot(top[next(panel)]), runs)
    if heat:
        draw_heatmaps(fig, grid, heat, heat_rows)
    path = Path(path)
    fig.savefig(path, dpi=90)
    return path


def draw_batch_curve(ax: Axes, runs: list[RunRecord], labels: list[str], key: str) -> None:
    """Throughput against the swept batch key, one line per setting of everything else."""
    short = key.rsplit(".", 1)[-1]
    lines: dict[str, list[tuple[float, float]]] = {}
    for run, label in zip(runs, labels):
        rest = " ".join(p for p in label.split(" ") if not p.startswith(f"{short}=")) or "runs"
        lines.setdefault(rest, []).append((float(run.value(key)), run.metrics.get("throughput_tok_s") or 0.0))
    for name, points in lines.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel(key)
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"throughput against {short}")
    ax.legend(fontsize="small")


def routing_axis(run: RunRecord) -> str:
    """Which routing axis a run moves: its router, and the routing.* options it turns on (routers/adjust.py)."""
    name = str(run.value("router.name"))
    routing = run.config.get("routing") or {}
    if routing.get("prune_experts") is not None:
        name += f" + prune ({routing.get('prune_by')})"
    if (routing.get("skip_beta") or 0) > 0:
        name += " + skip"
    if routing.get("temperature", 1.0) != 1.0:
        name += " + temperature"
    return name


def draw_quality_cost(ax: Axes, runs: list[RunRecord]) -> None:
    """KL vs native routing against the mean experts a token visited, one line per routing axis."""
    lines: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        if QUALITY in run.metrics and EXPERTS_PER_TOKEN in run.metrics:
            point = (float(run.metrics[EXPERTS_PER_TOKEN]), float(run.metrics[QUALITY]))
            lines.setdefault(routing_axis(run), []).append(point)
    for name, points in sorted(lines.items()):
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel("experts per token (mean over MoE layers)")
    ax.set_ylabel("KL(native || run), nats per token")
    ax.set_title("quality cost against experts per token")
    ax.legend(fontsize="small")


def draw_hit_rates(ax: Axes, runs: list[RunRecord]) -> None:
    """Grouped bars: one group per workload, one bar per cache."""
    workloads = list(dict.fromkeys(str(r.choice("workload")) for r in runs))
    caches = list(dict.fromkeys(str(r.choice("cache")) for r in runs))
    width = 0.8 / len(caches)
    for i, cache in enumerate(caches):
        heights = []
        for workload in workloads:
            rates = [
                r.metrics.get("cache_hit_rate") or 0.0
                for r in runs
                if str(r.choice("cache")) == cache and str(r.choice("workload")) == workload
            ]
            heights.append(float(np.mean(rates)) if rates else 0.0)
        ax.bar(np.arange(len(workloads)) + i * width, heights, width, label=cache)
    ax.set_xticks(np.arange(len(workloads)) + 0.4 - width / 2, workloads)
    ax.set_ylim(0, 1)
    ax.set_ylabel("prompt tokens served from cache")
    ax.set_title("cache hit rate by workload")
    ax.legend(title="cache", fontsize="small")


def draw_heatmaps(fig: Figure, grid: GridSpec, heat: list[tuple[str, list[list[int]]]], rows: int) -> None:
    """One heatmap per run, rows of HEATMAPS_PER_ROW, one shared colour scale (its bar beside the first row)."""
    from matplotlib.ticker import MaxNLocator

    ratios = [load_ratio(counts) for _, counts in heat]
    vmax = max(float(r.max()) for r in ratios) or 1.0
    colorbar_ax = None
    image = None
    for row in range(rows):
        cells = grid[1 + row].subgridspec(1, HEATMAPS_PER_ROW + 1, width_ratios=[1.0] * HEATMAPS_PER_ROW + [0.06])
        if row == 0:
            colorbar_ax = fig.add_subplot(cells[HEATMAPS_PER_ROW])
        for col in range(HEATMAPS_PER_ROW):
            index = row * HEATMAPS_PER_ROW + col
            if index >= len(heat):
                break
            ax = fig.add_subplot(cells[col])
            image = ax.imshow(ratios[index], aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
            ax.set_title(heat[index][0], fontsize="small")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("expert")
            ax.set_ylabel("layer")
    fig.colorbar(image, cax=colorbar_ax, label="load / mean load")
