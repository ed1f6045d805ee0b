"""Kernel figures on the GPU, against the machine's own copy bandwidth and bf16 matmul rate, in one run.

    python tools/bench_kernels.py --out benchmarks/kernels

For the fused MoE at the OLMoE-1B-7B shape (E=64, k=8, H=2048, I=1024) it
checks bf16 outputs against the reference loop, then times the whole forward
(alignment, both kernels, the top-k sum) replayed from a CUDA graph with a
cold L2, and reports the bandwidth over the expert weights the step must read
(decode sizes) and the matmul rate (prefill sizes); grouped_mm and the
reference loop are timed beside it. For attention it times the Triton decode
kernel (bandwidth over the K/V it reads) and the extend kernel (TFLOP/s).
Writes ``kernels.json`` and ``kernels.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import triton
import triton.testing

from moeframe.attention import attend_reference
from moeframe.attention.batch import ForwardBatch
from moeframe.attention.triton_decode import decode_attention
from moeframe.attention.triton_extend import ExtendTile, extend_attention
from moeframe.experts import EXPERTS
from moeframe.experts.moe_configs import TileConfig, pick_config
from moeframe.experts.triton_moe import (
    DOWN_TOPK_SUM_TILE,
    MAX_SINGLE_PASS_TOKENS,
    align,
    fused_moe,
    run_down,
    run_gate_up,
    run_single_pass,
)
from moeframe.routers.plan import RoutingPlan

E, K, H, I = 64, 8, 2048, 1024
# Tiles of the down + top-k sum kernel timed in the layer stack (block_n, block_k, group_m, warps, stages).
DOWN_TOPK_SUM_TILES = [
    DOWN_TOPK_SUM_TILE,
    TileConfig(16, 256, 1, 4, 4),
    TileConfig(16, 256, 1, 4, 6),
    TileConfig(16, 128, 1, 4, 8),
    TileConfig(16, 512, 1, 8, 4),
    TileConfig(32, 256, 1, 4, 4),
]
EXTEND_TILES = [ExtendTile(128, 64, 8, 3), ExtendTile(128, 128, 8, 2), ExtendTile(128, 128, 8, 3), ExtendTile(64, 64, 4, 3), ExtendTile(128, 32, 4, 3)]


def cold_ms(fn: Callable[[], object]) -> float:
    """Median time of fn with L2 flushed before each call (triton's do_bench)."""
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def graph_of(fn: Callable[[], object]) -> torch.cuda.CUDAGraph:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def copy_bandwidth_gbs() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=5, rep=100, return_mode="median")
    return 2 * src.numel() / ms / 1e6


def matmul_tflops() -> float:
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    ms = triton.testing.do_bench(lambda: a @ b, warmup=10, rep=200, return_mode="median")
    return 2 * 8192**3 / ms / 1e9


def random_experts() -> tuple[torch.Tensor, torch.Tensor]:
    """w13 [E, 2I, H] and w2 [E, H, I] in bf16, scaled so activations stay O(1)."""
    w13 = (torch.randn(E, 2 * I, H, device="cuda") / H**0.5).bfloat16()
    w2 = (torch.randn(E, H, I, device="cuda") / I**0.5).bfloat16()
    return w13, w2


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max())


def bench_moe(num_tokens: int, w13: torch.Tensor, w2: torch.Tensor, copy_gbs: float, mm_tflops: float) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(num_tokens)
    hidden = torch.randn(num_tokens, H, device="cuda", generator=gen).bfloat16()
    topk_ids = torch.rand(num_tokens, E, device="cuda", generator=gen).topk(K, dim=-1).indices
    weights = torch.softmax(torch.rand(num_tokens, K, device="cuda", generator=gen), -1)
    plan = RoutingPlan(topk_ids, weights)
    reference = EXPERTS.build({"name": "reference"})
    grouped = EXPERTS.build({"name": "grouped_mm"})
    ref = reference.forward(hidden, w13, w2, plan)
    fused = fused_moe(hidden, w13, w2, topk_ids, weights)

    graph = graph_of(lambda: fused_moe(hidden, w13, w2, topk_ids, weights))
    fused_ms = cold_ms(graph.replay)
    config = pick_config(num_tokens, K, E, I, H, hidden.device, hidden.dtype, True)
    blocks = align(topk_ids, E, config.block_m)
    act = hidden.new_empty(num_tokens * K, I)
    out = hidden.new_empty(num_tokens * K, H)
    flat_weights = weights.reshape(-1).float().contiguous()

    def kernels_only() -> None:
        if num_tokens <= MAX_SINGLE_PASS_TOKENS:  # the one kernel and its output's zero fill
            run_single_pass(hidden, w13, w2, topk_ids, weights)
            return
        run_gate_up(hidden, w13, blocks, act, K, config.gate_up)
        run_down(act, w2, flat_weights, blocks, out, config.down)

    kernels_ms = cold_ms(graph_of(kernels_only).replay)
    experts_read = int(torch.unique(topk_ids).numel())
    weight_bytes = experts_read * (w13[0].numel() + w2[0].numel()) * w13.element_size()
    flops = 2 * num_tokens * K * 3 * H * I
    row = {
        "tokens": num_tokens,
        "config": config.to_json(),
        "kernels_us": kernels_ms * 1e3,
        "kernels_frac_copy_bw": weight_bytes / kernels_ms / 1e6 / copy_gbs,
        "kernels_frac_matmul": flops / kernels_ms / 1e9 / mm_tflops,
        "experts_read": experts_read,
        "weight_mb": weight_bytes / 1e6,
        "triton_us": fused_ms * 1e3,
        "triton_gbs": weight_bytes / fused_ms / 1e6,
        "triton_frac_copy_bw": weight_bytes / fused_ms / 1e6 / copy_gbs,
        "triton_tflops": flops / fused_ms / 1e9,
        "triton_frac_matmul": flops / fused_ms / 1e9 / mm_tflops,
        "triton_rel_err": rel_err(fused, ref),
        "reference_us": cold_ms(lambda: reference.forward(hidden, w13, w2, plan)) * 1e3,
    }
    if num_tokens <= 8:
        for layout, tokens in (("one_per_block", num_tokens), ("aligned", 0)):
            graph = graph_of(lambda: fused_moe(hidden, w13, w2, topk_ids, weights, one_per_block_tokens=tokens, single_pass_tokens=0))
            row[f"{layout}_us"] = cold_ms(graph.replay) * 1e3
    try:
        row["grouped_mm_rel_err"] = rel_err(grouped.forward(hidden, w13, w2, plan), ref)
        row["grouped_mm_us"] = cold_ms(lambda: grouped.forward(hidden, w13, w2, plan)) * 1e3
    except Exception as err:  # report, do not hide, a torch build without a working _grouped_mm
        row["grouped_mm_error"] = f"{type(err).__name__}: {err}"[:200]
    return row


def tile_name(tile: TileConfig) -> str:
    return f"{tile.block_n}x{tile.block_k} w{tile.num_warps} s{tile.num_stages}"


def bench_moe_stack(num_tokens: int, stack: list[tuple[torch.Tensor, torch.Tensor]], copy_gbs: float) -> dict:
    """The forward as a decode step meets it: one CUDA graph runs it over every layer of a stack of distinct
    expert weights (several GB, so each layer reads its experts from HBM, as in the model), time / layers.

    Besides the default path, up to 8 tokens: the down projection and top-k sum as one kernel (each tile of
    DOWN_TOPK_SUM_TILES) and as two, forced, to set MAX_DOWN_TOPK_SUM_TOKENS from."""
    gen = torch.Generator(device="cuda").manual_seed(1000 + num_tokens)
    hidden = torch.randn(num_tokens, H, device="cuda", generator=gen).bfloat16()
    plans = [torch.rand(num_tokens, E, device="cuda", generator=gen).topk(K, dim=-1).indices for _ in stack]
    weights = torch.softmax(torch.rand(num_tokens, K, device="cuda", generator=gen), -1)

    def layer_ms(**options: object) -> float:
        def forward_all() -> None:
            for (w13, w2), ids in zip(stack, plans):
                fused_moe(hidden, w13, w2, ids, weights, single_pass_tokens=0, **options)

        graph = graph_of(forward_all)
        return triton.testing.do_bench(graph.replay, warmup=10, rep=100, return_mode="median") / len(stack)

    ms = layer_ms()
    read = sum(int(torch.unique(ids).numel()) for ids in plans) / len(stack)
    weight_bytes = read * (stack[0][0][0].numel() + stack[0][1][0].numel()) * stack[0][0].element_size()
    row = {"tokens": num_tokens, "layers": len(stack), "us": ms * 1e3, "weight_mb": weight_bytes / 1e6,
           "frac_copy_bw": weight_bytes / ms / 1e6 / copy_gbs}  # fmt: skip
    if num_tokens <= 8:
        row["separate_down_us"] = layer_ms(down_topk_sum_tokens=0) * 1e3
        row["down_topk_sum_us"] = {
            tile_name(tile): layer_ms(down_topk_sum_tokens=num_tokens, down_topk_sum_tile=tile) * 1e3 for tile in DOWN_TOPK_SUM_TILES
        }
    return row


def kv_batch(q_lens: list[int], kv_lens: list[int], num_slots: int) -> ForwardBatch:
    slots = torch.randperm(num_slots).tolist()
    contexts, used = [], 0
    for n in kv_lens:
        contexts.append(slots[used : used + n])
        used += n
    return ForwardBatch.build([[0] * q for q in q_lens], contexts, "cuda")


def bench_decode(batch_size: int, kv_len: int, q_heads: int, kv_heads: int, copy_gbs: float) -> dict:
    dim = 128
    num_slots = batch_size * kv_len + 64
    k_cache = torch.randn(num_slots, kv_heads, dim, device="cuda").bfloat16()
    v_cache = torch.randn(num_slots, kv_heads, dim, device="cuda").bfloat16()
    batch = kv_batch([1] * batch_size, [kv_len] * batch_size, num_slots)
    q = torch.randn(batch_size, q_heads, dim, device="cuda").bfloat16()
    out = decode_attention(q, k_cache, v_cache, batch, dim**-0.5)
    err = rel_err(out, attend_reference(q, k_cache, v_cache, batch, dim**-0.5))
    graph = graph_of(lambda: decode_attention(q, k_cache, v_cache, batch, dim**-0.5))
    ms = cold_ms(graph.replay)
    kv_bytes = 2 * batch_size * kv_len * kv_heads * dim * 2
    gbs = kv_bytes / ms / 1e6
    return {"batch": batch_size, "kv_len": kv_len, "q_heads": q_heads, "kv_heads": kv_heads, "us": ms * 1e3,
            "kv_mb": kv_bytes / 1e6, "gbs": gbs, "frac_copy_bw": gbs / copy_gbs, "rel_err": err}  # fmt: skip


def bench_extend(num_reqs: int, new_len: int, prefix_len: int, heads: int, mm_tflops: float) -> dict:
    dim = 128
    kv_len = prefix_len + new_len
    num_slots = num_reqs * kv_len + 64
    k_cache = torch.randn(num_slots, heads, dim, device="cuda").bfloat16()
    v_cache = torch.randn(num_slots, heads, dim, device="cuda").bfloat16()
    batch = kv_batch([new_len] * num_reqs, [kv_len] * num_reqs, num_slots)
    q = torch.randn(batch.num_tokens, heads, dim, device="cuda").bfloat16()
    out = extend_attention(q, k_cache, v_cache, batch, dim**-0.5)
    err = rel_err(out, attend_reference(q, k_cache, v_cache, batch, dim**-0.5))
    ms = cold_ms(lambda: extend_attention(q, k_cache, v_cache, batch, dim**-0.5))
    # Visible (query, key) pairs: the whole prefix plus the causal triangle of the new part.
    pairs = num_reqs * (new_len * prefix_len + new_len * (new_len + 1) / 2)
    flops = 4 * pairs * heads * dim
    tflops = flops / ms / 1e9
    tiles = {}
    for tile in EXTEND_TILES:
        tile_ms = cold_ms(lambda: extend_attention(q, k_cache, v_cache, batch, dim**-0.5, tile))
        tiles[f"{tile.block_m}x{tile.block_n} w{tile.num_warps} s{tile.num_stages}"] = flops / tile_ms / 1e9
    return {"requests": num_reqs, "new": new_len, "prefix": prefix_len, "heads": heads, "us": ms * 1e3,
            "tflops": tflops, "frac_matmul": tflops / mm_tflops, "rel_err": err, "tflops_by_tile": tiles}  # fmt: skip


def markdown(result: dict) -> str:
    lines = [
        f"# Kernel benchmarks: {result['device']}",
        "",
        f"{result['date']}; torch {result['torch']}, triton {result['triton']}; command: `{result['command']}`",
        "",
        f"Copy bandwidth (read + write): {result['copy_gbs']:.0f} GB/s; bf16 matmul 8192^3: {result['matmul_tflops']:.0f} TFLOP/s.",
        "",
        "## Fused MoE, OLMoE-1B-7B shape (E=64, k=8, H=2048, I=1024, bf16), whole forward from a CUDA graph, cold L2",
        "",
        "Forward: alignment, both kernels and the top-k sum (T <= 2: zero fill, the single-pass kernel and the cast); "
        "kernels: the two GEMM kernels alone (T <= 2: the single-pass kernel and its zero fill).",
        "",
        "| T | experts read | weights MB | forward us | GB/s | of copy BW | TFLOP/s | of matmul "
        "| kernels us | kernels of copy BW | kernels of matmul | grouped_mm us | reference us | rel err |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["moe"]:
        lines.append(
            f"| {r['tokens']} | {r['experts_read']} | {r['weight_mb']:.1f} | {r['triton_us']:.1f} | {r['triton_gbs']:.0f} | "
            f"{r['triton_frac_copy_bw']:.0%} | {r['triton_tflops']:.1f} | {r['triton_frac_matmul']:.0%} | "
            f"{r['kernels_us']:.1f} | {r['kernels_frac_copy_bw']:.0%} | {r['kernels_frac_matmul']:.0%} | "
            f"{r.get('grouped_mm_us', float('nan')):.1f} | {r['reference_us']:.1f} | {r['triton_rel_err']:.1e} |"
        )
    small = [r for r in result["moe"] if "one_per_block_us" in r]
    if small:
        lines += ["", "Batch layouts of the two-kernel path at decode sizes (forward us): one block per assignment (no alignment pass) vs aligned.", "",
                  "| T | one per block | aligned |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {r['tokens']} | {r['one_per_block_us']:.1f} | {r['aligned_us']:.1f} |" for r in small]
    lines += ["", "## Decode attention (bf16, head dim 128, random slots), CUDA graph, cold L2", "",
              "| batch | kv len | q heads | kv heads | us | KV MB | GB/s | of copy BW | rel err |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["decode"]:
        lines.append(
            f"| {r['batch']} | {r['kv_len']} | {r['q_heads']} | {r['kv_heads']} | {r['us']:.1f} | {r['kv_mb']:.1f} | "
            f"{r['gbs']:.0f} | {r['frac_copy_bw']:.0%} | {r['rel_err']:.1e} |"
        )
    lines += ["", "## Extend attention (bf16, head dim 128, random slots)", "",
              "| requests | new | prefix | heads | us | TFLOP/s | of matmul | rel err |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["extend"]:
        lines.append(
            f"| {r['requests']} | {r['new']} | {r['prefix']} | {r['heads']} | {r['us']:.1f} | {r['tflops']:.1f} | "
            f"{r['frac_matmul']:.0%} | {r['rel_err']:.1e} |"
        )
    if result.get("moe_stack"):
        lines += ["", f"## Fused MoE in a layer stack: one CUDA graph over {result['moe_stack'][0]['layers']} layers of distinct "
                  "expert weights, time per layer (the default deterministic path, as the model runs it)", "",
                  "| T | weights MB per layer | us per layer | of copy BW |", "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['tokens']} | {r['weight_mb']:.1f} | {r['us']:.1f} | {r['frac_copy_bw']:.0%} |" for r in result["moe_stack"]]
        forced = [r for r in result["moe_stack"] if "down_topk_sum_us" in r]
        if forced:
            tiles = list(forced[0]["down_topk_sum_us"])
            lines += ["", "Down projection and top-k sum, forced (us per layer): two kernels (down_weighted + sum) vs one "
                      "(down_topk_sum_kernel) by tile (block_n x block_k, warps, stages); the first tile is the default.", "",
                      "| T | two kernels | " + " | ".join(tiles) + " |", "|---|---|" + "---|" * len(tiles)]  # fmt: skip
            lines += [f"| {r['tokens']} | {r['separate_down_us']:.1f} | " + " | ".join(f"{r['down_topk_sum_us'][t]:.1f}" for t in tiles) + " |"
                      for r in forced]  # fmt: skip
    for r in result["extend"]:
        lines.append(f"\nExtend tiles, {r['requests']} x {r['new']} on {r['prefix']} (TFLOP/s): "
                     + ", ".join(f"{name}: {v:.0f}" for name, v in r["tflops_by_tile"].items()))  # fmt: skip
    lines += ["", "Errors: " + ("; ".join(result["errors"]) or "none")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/kernels"))
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 2, 4, 8, 32, 128, 512, 4096])
    parser.add_argument("--tables", default="moe,moe_stack,decode,extend", help="which tables to measure")
    parser.add_argument("--stack-layers", type=int, default=8, help="layers of distinct expert weights for the in-stack figure")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_kernels needs a CUDA device")
    torch.manual_seed(0)
    copy_gbs, mm_tflops = copy_bandwidth_gbs(), matmul_tflops()
    w13, w2 = random_experts()
    result = {
        "device": torch.cuda.get_device_name(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "command": "python " + " ".join(sys.argv),
        "copy_gbs": copy_gbs,
        "matmul_tflops": mm_tflops,
        "moe": [],
        "moe_stack": [],
        "decode": [],
        "extend": [],
        "errors": [],
    }
    cases = [("moe", bench_moe, (t, w13, w2, copy_gbs, mm_tflops)) for t in args.tokens]
    stack = [random_experts() for _ in range(args.stack_layers if "moe_stack" in args.tables else 0)]
    cases += [("moe_stack", bench_moe_stack, (t, stack, copy_gbs)) for t in args.tokens if t <= 32]
    cases += [("decode", bench_decode, (b, n, hq, hkv, copy_gbs))
              for b, n, hq, hkv in [(1, 1024, 16, 16), (1, 8192, 16, 16), (8, 1024, 16, 16),
                                    (32, 1024, 16, 16), (128, 1024, 16, 16), (32, 4096, 32, 4)]]  # fmt: skip
    cases += [("extend", bench_extend, (r, n, p, h, mm_tflops)) for r, n, p, h in [(8, 1024, 0, 16), (8, 256, 1024, 16), (1, 4096, 0, 16)]]
    for table, bench, bench_args in [case for case in cases if case[0] in args.tables.split(",")]:
        try:
            result[table].append(bench(*bench_args))
        except Exception as err:  # one failing case is reported in the output, the others still run
            sizes = [a for a in bench_args if isinstance(a, int)]
            result["errors"].append(f"{table}{sizes}: {type(err).__name__}: {err}"[:500])
        print(table, result[table][-1] if result[table] else None, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "kernels.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
