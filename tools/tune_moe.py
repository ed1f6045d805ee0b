"""Tune the fused-MoE block sizes for one expert shape on this GPU and save them as a config table.

    python tools/tune_moe.py --experts 64 --top-k 8 --hidden 2048 --inter 1024 --tokens 1 8 32 4096

For each token count it tries every ``block_m`` that suits the rows per expert,
and for each the tile shapes of the gate/up and the down kernel separately
(they share only ``block_m``), timing the kernels alone on random routing.
The best entries are merged into
``moeframe/experts/configs/E=..,I=..,H=..,device=..,dtype=...json`` (or
``--out``), which ``experts=triton`` reads (vLLM's benchmark_moe does the same
job for its fused_moe).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from moeframe.experts.moe_align import align_by_expert
from moeframe.experts.moe_configs import CONFIG_DIR, MoEConfig, TileConfig, config_file_name, device_name
from moeframe.experts.triton_moe import run_down, run_gate_up

SMEM_BUDGET_BYTES = 200 * 1024


def candidate_block_ms(rows_per_expert: float) -> list[int]:
    if rows_per_expert <= 8:
        return [16]
    if rows_per_expert <= 64:
        return [16, 32, 64]
    return [64, 128]


def candidate_tiles(block_m: int, weight_tiles: int, elem_bytes: int) -> list[TileConfig]:
    """Tile shapes that fit shared memory and keep the accumulators in registers.

    Small ``block_m`` (decode) is a weight stream: narrow N, long K, deep
    pipelines. Large ``block_m`` is MMA-bound: wide tiles, grouped ordering.
    """
    if block_m <= 16:
        shapes = [(n, k, 1, 4, s) for n in (16, 32, 64, 128) for k in (128, 256, 512) for s in (3, 4, 5)]
    elif block_m <= 64:
        shapes = [(n, k, 8, 4, 3) for n in (64, 128) for k in (64, 128)]
    else:
        shapes = [(n, 64, 8, w, s) for n in (64, 128) for w in (4, 8) for s in (3, 4)]
    tiles = []
    for n, k, group_m, warps, stages in shapes:
        smem = stages * (block_m * k + weight_tiles * k * n) * elem_bytes
        accumulator_regs = weight_tiles * block_m * n // (warps * 32)
        if smem <= SMEM_BUDGET_BYTES and accumulator_regs <= 128:
            tiles.append(TileConfig(n, k, group_m, warps, stages))
    return tiles


def time_ms(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=5, rep=20)
    fn()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def best_tile(run: Callable[[TileConfig], None], tiles: list[TileConfig], device: torch.device) -> tuple[TileConfig, float]:
    best, best_ms = None, float("inf")
    for tile in tiles:
        try:
            ms = time_ms(lambda: run(tile), device)
        except Exception as err:  # a tile the compiler rejects (shared memory, registers) is skipped
            print(f"    skip {tile}: {type(err).__name__}")
            continue
        if ms < best_ms:
            best, best_ms = tile, ms
    if best is None:
        raise RuntimeError("no tile configuration ran")
    return best, best_ms


def tune_tokens(num_tokens: int, args: argparse.Namespace, w13: torch.Tensor, w2: torch.Tensor, device: torch.device) -> tuple[MoEConfig, float]:
    gen = torch.Generator(device=device).manual_seed(num_tokens)
    hidden = torch.randn(num_tokens, args.hidden, device=device, generator=gen).to(w13.dtype)
    topk_ids = torch.rand(num_tokens, args.experts, device=device, generator=gen).topk(args.top_k, dim=-1).indices
    weights = torch.rand(num_tokens * args.top_k, device=device, generator=gen)
    act = hidden.new_empty(num_tokens * args.top_k, args.inter)
    out = hidden.new_empty(num_tokens * args.top_k, args.hidden)
    best, best_ms = None, float("inf")
    for block_m in candidate_block_ms(num_tokens * args.top_k / args.experts):
        blocks = align_by_expert(topk_ids, args.experts, block_m)
        elem = hidden.element_size()
        gate_up, gate_up_ms = best_tile(
            lambda t: run_gate_up(hidden, w13, blocks, act, args.top_k, t), candidate_tiles(block_m, 2, elem), device
        )
        down, down_ms = best_tile(lambda t: run_down(act, w2, weights, blocks, out, t), candidate_tiles(block_m, 1, elem), device)
        print(f"  T={num_tokens} block_m={block_m}: gate_up {gate_up_ms * 1e3:.1f} us {gate_up}, down {down_ms * 1e3:.1f} us {down}")
        if gate_up_ms + down_ms < best_ms:
            best, best_ms = MoEConfig(block_m, gate_up, down), gate_up_ms + down_ms
    return best, best_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--inter", type=int, default=1024)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
    parser.add_argument("--out", type=Path, default=CONFIG_DIR)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    w13 = (torch.randn(args.experts, 2 * args.inter, args.hidden, device=device, generator=gen) / args.hidden**0.5).to(dtype)
    w2 = (torch.randn(args.experts, args.hidden, args.inter, device=device, generator=gen) / args.inter**0.5).to(dtype)

    path = args.out / config_file_name(args.experts, args.inter, args.hidden, device_name(device), dtype)
    table = json.loads(path.read_text()) if path.is_file() else {}
    args.out.mkdir(parents=True, exist_ok=True)
    for num_tokens in args.tokens:
        config, ms = tune_tokens(num_tokens, args, w13, w2, device)
        print(f"T={num_tokens}: best {ms * 1e3:.1f} us {config}", flush=True)
        table[str(num_tokens)] = config.to_json()
        # Saved after every token count, so an interrupted run keeps what it measured.
        path.write_text(json.dumps(dict(sorted(table.items(), key=lambda kv: int(kv[0]))), indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
