"""Gate/up + SiLU and the down projection of a decode-sized MoE batch in one launch, joined by per-assignment counts.

At batch 1-2 the experts run as two GEMV launches (_gate_up_gemv_kernel.py,
then _down_prefetch_kernel.py); the boundary between them and the ramp and
tail of two grids cost a few microseconds a layer. Here one grid holds both
kinds of tile: ``A * gate_tiles`` gate/up tiles, then ``A * down_tiles`` down
tiles, for ``A`` assignments. A down tile needs every gate/up tile of its
assignment finished, so programs wait on one another, which is only safe if
the tiles waited on are already running. As in CUB's decoupled look-back scan
and stream-K GEMM, a program takes its tile from a global atomic counter, not
from its program id: tiles are handed out in the order programs actually
start, so when a program draws a down tile every gate/up tile is held by a
program that has started and will finish, whatever order the hardware
dispatches programs in, and no co-resident grid is needed.

A gate/up tile runs gate_up_gemv_tile, then (every thread's stores ordered by
the barrier) bumps its assignment's ``ready`` count with a gpu-scope release.
A down tile loads its expert id and weight tile first (down_weight_tile), so
its weight stream overlaps the tail of gate/up, spins with acquire reads
until ``ready`` reaches ``gate_tiles``, then reads the act row and stores
(down_store_tile). Dropped assignments take the same steps (their gate/up
tiles store nothing but still count), so no spin waits on them.

The counters return to zero within every launch, with no host reset, so CUDA
graphs can replay it: each down tile bumps its assignment's ``taken`` count
after its spin, and the last resets that assignment's two counts (no tile of
the launch touches them again); each program bumps ``done`` at its end, and the
last program of the grid resets it and the tile counter (every program has
drawn by then), the last-program pattern of routers/_gate_topk_kernel.py.

Layout of ``counters_ptr`` (int32): [tile, done, ready[A], taken[A]].

Imported lazily (see moe_gemv_one_launch.py): Triton decides at decoration
time whether to compile or interpret a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moeframe.experts._down_prefetch_kernel import down_store_tile, down_weight_tile
from moeframe.experts._gate_up_gemv_kernel import gate_up_gemv_tile
from moeframe.gpu._pdl_jit import pdl_wait


@triton.jit
def moe_gemv_one_launch_kernel(
    x_ptr,
    w13_ptr,
    w2_ptr,
    act_ptr,
    out_ptr,
    weights_ptr,
    topk_ids_ptr,
    counters_ptr,
    num_assignments,
    top_k,
    hidden,
    inter,
    num_experts,
    gate_tiles,
    down_tiles,
    stride_xm,
    stride_w13e,
    stride_w13n,
    stride_w2e,
    stride_w2n,
    stride_am,
    stride_om,
    BLOCK_N_GATE: tl.constexpr,
    BLOCK_K_GATE: tl.constexpr,
    BLOCK_N_DOWN: tl.constexpr,
    BLOCK_K_DOWN: tl.constexpr,
    WEIGHT_EVICT: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    ready_ptr = counters_ptr + 2
    taken_ptr = counters_ptr + 2 + num_assignments
    all_gate_tiles = num_assignments * gate_tiles
    tile = tl.atomic_add(counters_ptr, 1, sem="relaxed", scope="gpu")
    if tile < all_gate_tiles:
        assignment = tile // gate_tiles
        gate_up_gemv_tile(
            x_ptr, w13_ptr, act_ptr, topk_ids_ptr, assignment, tile % gate_tiles, top_k, hidden, inter, num_experts,
            stride_xm, stride_w13e, stride_w13n, stride_am, BLOCK_N_GATE, BLOCK_K_GATE, WEIGHT_EVICT,
        )  # fmt: skip
        # every thread's act stores come before the release below
        tl.debug_barrier()
        tl.atomic_add(ready_ptr + assignment, 1, sem="release", scope="gpu")
    else:
        assignment = (tile - all_gate_tiles) // down_tiles
        tile_n = (tile - all_gate_tiles) % down_tiles
        w, routed = down_weight_tile(
            w2_ptr, topk_ids_ptr, assignment, tile_n, hidden, inter, num_experts, stride_w2e, stride_w2n,
            BLOCK_N_DOWN, BLOCK_K_DOWN, WEIGHT_EVICT,
        )  # fmt: skip
        ready = tl.atomic_add(ready_ptr + assignment, 0, sem="acquire", scope="gpu")
        while ready < gate_tiles:
            ready = tl.atomic_add(ready_ptr + assignment, 0, sem="acquire", scope="gpu")
        down_store_tile(
            act_ptr, out_ptr, weights_ptr, w, routed, assignment, tile_n, hidden, inter, stride_am, stride_om,
            BLOCK_N_DOWN, BLOCK_K_DOWN,
        )  # fmt: skip
        taken_before = tl.atomic_add(taken_ptr + assignment, 1, sem="acq_rel", scope="gpu")
        if taken_before == down_tiles - 1:
            tl.store(ready_ptr + assignment, 0)
            tl.store(taken_ptr + assignment, 0)
    done_before = tl.atomic_add(counters_ptr + 1, 1, sem="acq_rel", scope="gpu")
    if done_before == all_gate_tiles + num_assignments * down_tiles - 1:
        tl.store(counters_ptr, 0)
        tl.store(counters_ptr + 1, 0)
