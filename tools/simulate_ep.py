"""Estimate expert-parallel step time and all-to-all volume on 8..64 GPUs from recorded expert loads.

    python tools/simulate_ep.py outputs/DATE/TIME/metrics.json --preset olmoe-1b-7b --tokens 8192
    python tools/simulate_ep.py counts.json --preset qwen3-30b-a3b --gpus 8 16 32 64 --redundant 4 --network-gbps 25
    python tools/simulate_ep.py metrics.json --preset qwen3-30b-a3b --gpus 16 32 --stages 1 2 4 --micro-batches 4

The loads (a run's metrics.json, or a counts file {"counts": [[...]]}) give
each layer's expert distribution; the preset gives the shapes (its expert
count must match the recording). The cost model and its assumptions are in
moeframe/parallel/ep_cost.py; every assumption is an argument here. With
``--stages``, a second table splits each GPU count into pipeline stages of
expert-parallel groups (moeframe/parallel/pp_cost.py).
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from moeframe.model.families import family_of
from moeframe.model.presets import PRESETS, preset_config
from moeframe.parallel.ep_cost import Hardware, MoEShape, estimate
from moeframe.parallel.load_file import read_expert_counts
from moeframe.parallel.pp_cost import estimate_pipeline

COLUMNS = [
    ("gpus", "{:d}"), ("nodes", "{:d}"), ("experts_per_gpu", "{:d}"), ("imbalance", "{:.3f}"),
    ("all_to_all_gb", "{:.3f}"), ("all_to_all_ms", "{:.3f}"), ("expert_ms", "{:.3f}"),
    ("moe_step_ms", "{:.3f}"), ("comm_share", "{:.2f}"), ("tokens_per_s", "{:,.0f}"),
]


PIPELINE_COLUMNS = [
    ("gpus", "{:d}"), ("stages", "{:d}"), ("ep_size", "{:d}"), ("micro_batches", "{:d}"), ("stage_ms", "{:.3f}"),
    ("moe_step_ms", "{:.3f}"), ("bubble_share", "{:.2f}"), ("p2p_gb", "{:.4f}"), ("tokens_per_s", "{:,.0f}"),
]


def table(rows: list[dict], columns: list[tuple[str, str]] = COLUMNS) -> str:
    cells = [[name for name, _ in columns]] + [[fmt.format(row[name]) for name, fmt in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("loads", help="metrics.json of a run, or a counts file")
    parser.add_argument("--preset", required=True, help=f"model shapes; one of: {', '.join(sorted(PRESETS))}")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens in one step, over all GPUs")
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--redundant", type=int, default=0, help="EPLB replicas per layer")
    parser.add_argument("--bytes-per-value", type=int, default=2, help="activation and weight bytes (2: bf16, 1: fp8)")
    parser.add_argument("--stages", type=int, nargs="+", default=[], help="pipeline stages to split each GPU count into")
    parser.add_argument("--micro-batches", type=int, default=4, help="micro-batches per pipelined step")
    for f in fields(Hardware):
        flag = f"--{f.name.replace('_', '-')}"
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action="store_true", help="overlap all-to-all with expert compute")
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, help=f"default {f.default}")
    args = parser.parse_args()

    counts = read_expert_counts(args.loads)
    spec = family_of(preset_config(args.preset).model_type).parse(preset_config(args.preset))
    if not spec.is_moe or spec.moe.num_experts != counts.shape[1]:
        experts = spec.moe.num_experts if spec.is_moe else 0
        parser.error(f"{args.loads} records {counts.shape[1]} experts; preset {args.preset} has {experts}")
    shape = MoEShape(spec.hidden_size, spec.moe.intermediate_size, spec.moe.top_k, sum(spec.sparse_layers), args.bytes_per_value)
    hw = Hardware(**{f.name: getattr(args, f.name) for f in fields(Hardware)})
    rows = [estimate(counts, shape, n, args.tokens, hw, args.redundant) for n in args.gpus if n <= counts.shape[1]]
    print(f"{args.preset}: {shape.num_sparse_layers} MoE layers, {counts.shape[1]} experts, top-{shape.top_k}, H={shape.hidden_size}, "
          f"I={shape.expert_intermediate}; {args.tokens} tokens/step; redundant={args.redundant}")
    print(f"assumed: {hw.gpus_per_node} GPUs/node, NVLink {hw.nvlink_gbps} GB/s, network {hw.network_gbps} GB/s per GPU, "
          f"{hw.tflops} TFLOP/s, HBM {hw.hbm_gbps} GB/s, overlap={hw.overlap}")
    print(table(rows))
    skipped = [n for n in args.gpus if n > counts.shape[1]]
    if skipped:
        print(f"skipped {skipped}: more GPUs than experts")
    grid = [(n, s) for n in args.gpus for s in args.stages if n % s == 0 and n // s <= counts.shape[1] and s <= shape.num_sparse_layers]
    if grid:
        print(f"\npipeline x expert: stages of gpus/stages expert-parallel GPUs, {args.micro_batches} micro-batches per step")
        rows = [estimate_pipeline(counts, shape, s, n // s, args.tokens, args.micro_batches, hw, args.redundant) for n, s in grid]
        print(table(rows, PIPELINE_COLUMNS))


if __name__ == "__main__":
    main()
