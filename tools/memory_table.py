"""Memory tables: measured from run folders, or counted for model shapes too large to run here.

    python tools/memory_table.py --runs outputs/moe_vs_dense_memory/moe outputs/moe_vs_dense_memory/dense
    python tools/memory_table.py --presets olmoe-1b-7b dense-olmoe-1b-7b-size dense-olmoe-1b-7b-active \
        --kv-slots 65536 --dtype bfloat16

``--runs``: each run's metrics.json (``stats.memory``, see
moeframe/telemetry/memory.py): weights and KV pool as the engine counts
them, and the build's and the run's measured peaks above the memory in use
before the build; what the run's peak holds beyond weights and KV
(activations, temporaries, on the CPU also code loaded on first use and
allocator slack) is their difference. ``--presets``: weights and a KV pool of
``--kv-slots`` slots counted from the shapes alone, with the engine's own
accounting (parallel/stages.py's parameter count, which a test checks
against the built modules, and KVPool.bytes_per_slot); no activation or
peak figure, which only a run can give.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moeframe.cache.pool import KVPool
from moeframe.config import DTYPES
from moeframe.model.families import family_of
from moeframe.model.presets import preset_config
from moeframe.parallel.stages import model_parameters

MIB = 2**20


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:,.1f}"


def run_rows(folders: list[Path]) -> str:
    """Counted weights and KV; measured peaks above the memory in use before the build; the rest of the run's peak."""
    header = ["run", "weights MiB", "KV pool MiB", "build peak MiB", "run peak MiB", "run peak - weights - KV", "measured as"]
    rows = []
    for folder in folders:
        memory = json.loads((folder / "metrics.json").read_text())["stats"]["memory"]
        measured, weights, kv = memory["measured"], memory["weights_bytes"], memory["kv_pool_bytes"]
        run_peak = measured["run_peak_bytes"]
        rest = None if run_peak is None else run_peak - weights - kv
        rows.append([
            folder.name, mib(weights), mib(kv), mib(measured["build_peak_bytes"]), mib(run_peak), mib(rest), measured["source"],
        ])  # fmt: skip
    return markdown(header, rows)


def preset_rows(presets: list[str], kv_slots: int, dtype: str) -> str:
    size = DTYPES[dtype].itemsize
    rows = []
    for name in presets:
        config = preset_config(name)
        spec = family_of(config.model_type).parse(config)
        params = model_parameters(spec)
        att = spec.attention
        kv = KVPool.bytes_per_slot(spec.num_layers, att.cache_kv_heads, att.k_dim, att.v_dim, DTYPES[dtype]) * kv_slots
        weights = params * size
        rows.append([name, f"{params / 1e9:.3f}", mib(weights), mib(kv), mib(weights + kv)])
    return markdown(["preset", "parameters (B)", f"weights MiB ({dtype})", f"KV MiB ({kv_slots} slots)", "weights + KV MiB"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="run folders (each with metrics.json)")
    parser.add_argument("--presets", nargs="*", default=[], help="model presets to count")
    parser.add_argument("--kv-slots", type=int, default=65536, help="KV pool size in token slots, for --presets")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES), help="weight and KV dtype, for --presets")
    args = parser.parse_args()
    if not args.runs and not args.presets:
        parser.error("give --runs, --presets or both")
    if args.runs:
        print(run_rows(args.runs))
    if args.presets:
        print(preset_rows(args.presets, args.kv_slots, args.dtype))


if __name__ == "__main__":
    main()
