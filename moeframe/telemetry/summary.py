"""The one-screen summary a run prints at its end: what ran, then its scalar metrics in two columns.

Like the result block of vLLM's benchmark_serving: a title line naming the
configuration, then aligned ``name  value`` pairs; nested records stay in
metrics.json.
"""

from __future__ import annotations

from typing import Any

MIB = 1 / 2**20
UNITS = {
    "peak_memory_bytes": ("peak_memory_MiB", MIB),
    "weights_bytes": ("weights_MiB", MIB),
    "kv_pool_bytes": ("kv_pool_MiB", MIB),
    "run_peak_bytes": ("run_peak_MiB", MIB),
    "activation_peak_bytes": ("activation_peak_MiB", MIB),
}
# in metrics.json, but not worth a line on screen
HIDDEN = frozenset(
    {
        "ttft_ms_mean",
        "pool_slots",
        "pool_peak_used_slots",
        "cached_tokens_at_end",
        "expert_load_kept",
        "expert_load_dropped",
        "expert_load_mean_entropy_norm",
        "fidelity_positions",
    }
)


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def scalar_items(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    items = []
    for key, value in metrics.items():
        if isinstance(value, (dict, list)) or value is None or key in HIDDEN:
            continue
        if key in UNITS:
            key, scale = UNITS[key][0], UNITS[key][1]
            value = value * scale
        items.append((key, format_value(value)))
    return items


def summary_table(metrics: dict[str, Any], title: str = "", columns: int = 2) -> str:
    """``title``, a rule, and the scalar metrics laid out in ``columns`` column pairs."""
    items = scalar_items(metrics)
    if not items:
        return title
    rows = (len(items) + columns - 1) // columns
    cols = [items[c * rows : (c + 1) * rows] for c in range(columns)]
    key_w = [max((len(k) for k, _ in col), default=0) for col in cols]
    val_w = [max((len(v) for _, v in col), default=0) for col in cols]
    lines = []
    for r in range(rows):
        cells = [
            f"{col[r][0].ljust(key_w[c])}  {col[r][1].rjust(val_w[c])}" for c, col in enumerate(cols) if r < len(col)
        ]
        lines.append("   ".join(cells).rstrip())
    rule = "-" * max(len(line) for line in lines)
    return "\n".join(([title] if title else []) + [rule] + lines + [rule])
