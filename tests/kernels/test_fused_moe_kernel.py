"""experts=triton (fused MoE) against the per-expert reference loop."""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import random_experts, random_plan, tolerance
from sm90_compile import compile_for_sm90

from moeframe.experts import EXPERTS
from moeframe.experts.down_prefetch import run_down_prefetch
from moeframe.experts.gate_up_gemv import run_gate_up_gemv
from moeframe.experts.moe_configs import MoEConfig, TileConfig, default_config
from moeframe.experts.triton_moe import (
    DOWN_TOPK_SUM_TILE,
    MAX_DOWN_TOPK_SUM_TOKENS,
    TritonMoEParams,
    fused_moe,
    run_down,
    run_down_topk_sum,
    run_gate_up,
)
from moeframe.routers.plan import RoutingPlan

# Small tiles so that a few tokens already span several blocks per expert and
# the hidden/expert widths are not multiples of the tiles.
SMALL_TILES = MoEConfig(16, TileConfig(16, 32), TileConfig(32, 16))
# Fewer, larger programs for the decode-sized cases, which the interpreter runs slowly.
DECODE_TILES = MoEConfig(16, TileConfig(64, 64), TileConfig(64, 64))


def reference(hidden, w13, w2, plan):
    return EXPERTS.build({"name": "reference"}).forward(hidden, w13, w2, plan)


@pytest.mark.parametrize(
    "num_tokens,num_experts,top_k",
    [(1, 6, 1), (1, 7, 4), (5, 5, 2), (40, 3, 2), (23, 9, 3)],
)
def test_fused_moe_matches_reference_in_float32(device, num_tokens, num_experts, top_k):
    gen = torch.Generator().manual_seed(num_tokens * 100 + num_experts)
    hidden_size, inter = 48, 40
    w13, w2 = random_experts(num_experts, hidden_size, inter, torch.float32, gen)
    plan = random_plan(num_tokens, num_experts, top_k, drop_fraction=0.0, gen=gen)
    hidden = torch.randn(num_tokens, hidden_size, generator=gen)
    hidden, w13, w2 = hidden.to(device), w13.to(device), w2.to(device)
    plan.topk_ids, plan.topk_weights = plan.topk_ids.to(device), plan.topk_weights.to(device)
    out = fused_moe(hidden, w13, w2, plan.topk_ids, plan.topk_weights, SMALL_TILES)
    torch.testing.assert_close(out, reference(hidden, w13, w2, plan), **tolerance(torch.float32, device))


def test_fused_moe_skips_dropped_assignments(device):
    gen = torch.Generator().manual_seed(7)
    w13, w2 = random_experts(5, 32, 32, torch.float32, gen)
    plan = random_plan(30, 5, 3, drop_fraction=0.4, gen=gen)
    plan.topk_ids[4] = -1
    plan.topk_weights[4] = 0.0
    hidden = torch.randn(30, 32, generator=gen)
    args = [t.to(device) for t in (hidden, w13, w2, plan.topk_ids, plan.topk_weights)]
    out = fused_moe(*args, SMALL_TILES)
    plan.topk_ids, plan.topk_weights = args[3], args[4]
    torch.testing.assert_close(out, reference(*args[:3], plan), **tolerance(torch.float32, device))
    assert torch.all(out[4] == 0)


@pytest.mark.parametrize("gemv_kernels", [True, False])
@pytest.mark.parametrize("num_tokens", [1, 3])
def test_one_assignment_per_block_layout_matches_reference_with_dropped_assignments(device, num_tokens, gemv_kernels):
    gen = torch.Generator().manual_seed(9)
    w13, w2 = random_experts(6, 32, 32, torch.float32, gen)
    plan = random_plan(num_tokens, 6, 4, drop_fraction=0.0, gen=gen)
    plan.topk_ids[0, 1], plan.topk_weights[0, 1] = -1, 0.0
    hidden = torch.randn(num_tokens, 32, generator=gen)
    args = [t.to(device) for t in (hidden, w13, w2, plan.topk_ids, plan.topk_weights)]
    out = fused_moe(
        *args, SMALL_TILES, one_per_block_tokens=num_tokens, single_pass_tokens=0, down_topk_sum_tokens=0,
        prefetch_down=gemv_kernels, gemv_gate_up=gemv_kernels,
    )  # fmt: skip
    plan.topk_ids, plan.topk_weights = args[3], args[4]
    torch.testing.assert_close(out, reference(*args[:3], plan), **tolerance(torch.float32, device))


def test_fused_moe_matches_reference_in_low_precision_with_default_tiles(device, low_precision):
    gen = torch.Generator().manual_seed(3)
    num_tokens, num_experts, top_k = 20, 6, 2
    w13, w2 = random_experts(num_experts, 64, 32, low_precision, gen)
    plan = random_plan(num_tokens, num_experts, top_k, drop_fraction=0.1, gen=gen)
    hidden = torch.randn(num_tokens, 64, generator=gen).to(low_precision)
    hidden, w13, w2 = hidden.to(device), w13.to(device), w2.to(device)
    plan.topk_ids, plan.topk_weights = plan.topk_ids.to(device), plan.topk_weights.to(device)
    out = fused_moe(hidden, w13, w2, plan.topk_ids, plan.topk_weights, default_config(num_tokens, top_k, num_experts))
    torch.testing.assert_close(out.float(), reference(hidden, w13, w2, plan).float(), **tolerance(low_precision, device))


def test_registered_triton_kernel_builds_from_its_config_and_matches_reference(device):
    gen = torch.Generator().manual_seed(11)
    kernel = EXPERTS.build({"name": "triton", "use_tuned_configs": False})
    w13, w2 = random_experts(4, 32, 16, torch.float32, gen)
    plan = random_plan(3, 4, 2, drop_fraction=0.0, gen=gen)
    hidden = torch.randn(3, 32, generator=gen)
    hidden, w13, w2 = hidden.to(device), w13.to(device), w2.to(device)
    plan.topk_ids, plan.topk_weights = plan.topk_ids.to(device), plan.topk_weights.to(device)
    w13p, w2p = kernel.prepare(w13, w2)
    torch.testing.assert_close(kernel.forward(hidden, w13p, w2p, plan), reference(hidden, w13, w2, plan), **tolerance(torch.float32, device))


def test_fused_moe_rejects_mismatched_weight_shapes():
    w13, w2 = torch.zeros(4, 32, 16), torch.zeros(4, 16, 8)
    with pytest.raises(ValueError, match="w2 must be"):
        fused_moe(torch.zeros(2, 16), w13, w2, torch.zeros(2, 1, dtype=torch.int64), torch.ones(2, 1))


@pytest.mark.parametrize("num_tokens", [1, 2])
def test_single_pass_path_matches_reference_with_dropped_assignments(device, num_tokens):
    gen = torch.Generator().manual_seed(11)
    # widths not multiples of the single-pass tile, so its masks are exercised
    w13, w2 = random_experts(6, 200, 72, torch.float32, gen)
    plan = random_plan(num_tokens, 6, 4, drop_fraction=0.0, gen=gen)
    plan.topk_ids[0, 2], plan.topk_weights[0, 2] = -1, 0.0
    hidden = torch.randn(num_tokens, 200, generator=gen)
    args = [t.to(device) for t in (hidden, w13, w2, plan.topk_ids, plan.topk_weights)]
    out = fused_moe(*args, SMALL_TILES, single_pass_tokens=num_tokens)
    plan.topk_ids, plan.topk_weights = args[3], args[4]
    torch.testing.assert_close(out, reference(*args[:3], plan), **tolerance(torch.float32, device))


# (tokens, k, hidden, inter): T = 1, 2, and 4 (act rows laid out by
# the aligned gate/up path); hidden and inter not multiples of DOWN_TOPK_SUM_TILE
# (16 x 512), inter past one K block.
DOWN_TOPK_SUM_CASES = [(1, 1, 48, 40), (1, 8, 40, 600), (2, 2, 33, 257), (2, 8, 40, 600), (4, 2, 24, 520)]


def unnormalised_plan(num_tokens: int, num_experts: int, top_k: int, gen: torch.Generator) -> RoutingPlan:
    """Routing weights of either sign that do not sum to 1, so a kernel that drops or renormalises them is caught."""
    plan = random_plan(num_tokens, num_experts, top_k, drop_fraction=0.0, gen=gen)
    plan.topk_weights = 2 * torch.randn(num_tokens, top_k, generator=gen)
    return plan


def on(device, *tensors):
    return [t.to(device) for t in tensors]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_tokens,top_k,hidden_size,inter", DOWN_TOPK_SUM_CASES)
def test_down_topk_sum_path_matches_reference(device, dtype, num_tokens, top_k, hidden_size, inter):
    gen = torch.Generator().manual_seed(num_tokens * 31 + top_k)
    w13, w2 = random_experts(10, hidden_size, inter, dtype, gen)
    plan = unnormalised_plan(num_tokens, 10, top_k, gen)
    hidden = torch.randn(num_tokens, hidden_size, generator=gen).to(dtype)
    hidden, w13, w2, plan.topk_ids, plan.topk_weights = on(device, hidden, w13, w2, plan.topk_ids, plan.topk_weights)
    out = fused_moe(hidden, w13, w2, plan.topk_ids, plan.topk_weights, DECODE_TILES, single_pass_tokens=0, down_topk_sum_tokens=num_tokens)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), reference(hidden, w13, w2, plan).float(), **tolerance(dtype, device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_tokens,top_k,hidden_size,inter", DOWN_TOPK_SUM_CASES)
def test_down_topk_sum_path_equals_the_two_kernel_path(device, dtype, num_tokens, top_k, hidden_size, inter):
    gen = torch.Generator().manual_seed(num_tokens * 17 + top_k)
    w13, w2 = random_experts(10, hidden_size, inter, dtype, gen)
    plan = unnormalised_plan(num_tokens, 10, top_k, gen)
    hidden = torch.randn(num_tokens, hidden_size, generator=gen).to(dtype)
    args = on(device, hidden, w13, w2, plan.topk_ids, plan.topk_weights)
    fused = fused_moe(*args, DECODE_TILES, single_pass_tokens=0, down_topk_sum_tokens=num_tokens)
    separate = fused_moe(*args, DECODE_TILES, single_pass_tokens=0, down_topk_sum_tokens=0)
    torch.testing.assert_close(fused, separate, **tolerance(dtype, device))


def test_down_topk_sum_path_runs_up_to_its_threshold_only(device, monkeypatch):
    import moeframe.experts.triton_moe as triton_moe

    launched = []

    def spy(label, runner):
        def run(*args):
            launched.append(label)
            runner(*args)

        return run

    monkeypatch.setattr(triton_moe, "run_down_topk_sum", spy("fused", run_down_topk_sum))
    monkeypatch.setattr(triton_moe, "run_down", spy("separate", run_down))
    monkeypatch.setattr(triton_moe, "run_down_prefetch", spy("prefetch", run_down_prefetch))
    gen = torch.Generator().manual_seed(5)
    w13, w2 = on(device, *random_experts(4, 32, 16, torch.float32, gen))
    for threshold, num_tokens, prefetch_down in ((2, 2, True), (2, 3, True), (MAX_DOWN_TOPK_SUM_TOKENS, 1, True), (0, 1, False)):
        plan = random_plan(num_tokens, 4, 2, drop_fraction=0.0, gen=gen)
        args = on(device, torch.randn(num_tokens, 32), w13, w2, plan.topk_ids, plan.topk_weights)
        fused_moe(*args, single_pass_tokens=0, down_topk_sum_tokens=threshold, prefetch_down=prefetch_down)
    # the down + top-k sum kernel is off by default (MAX_DOWN_TOPK_SUM_TOKENS = 0); at T = 1 each
    # assignment has its block, and the prefetching down kernel runs unless prefetch_down is off
    assert launched == ["fused", "separate", "prefetch", "separate"]


def test_gate_up_runs_as_gemvs_only_where_each_assignment_has_a_block(device, monkeypatch):
    import moeframe.experts.triton_moe as triton_moe

    launched = []
    monkeypatch.setattr(triton_moe, "run_gate_up_gemv", lambda *args: launched.append("gemv") or run_gate_up_gemv(*args))
    monkeypatch.setattr(triton_moe, "run_gate_up", lambda *args: launched.append("tiled") or run_gate_up(*args))
    gen = torch.Generator().manual_seed(6)
    w13, w2 = on(device, *random_experts(4, 32, 16, torch.float32, gen))
    for num_tokens, gemv_gate_up in ((2, True), (3, True), (1, False)):
        plan = random_plan(num_tokens, 4, 2, drop_fraction=0.0, gen=gen)
        args = on(device, torch.randn(num_tokens, 32), w13, w2, plan.topk_ids, plan.topk_weights)
        fused_moe(*args, single_pass_tokens=0, gemv_gate_up=gemv_gate_up)
    assert launched == ["gemv", "tiled", "tiled"]  # one block per assignment up to MAX_ONE_PER_BLOCK_TOKENS = 2


def test_down_topk_sum_path_matches_reference_when_tokens_share_experts(device):
    gen = torch.Generator().manual_seed(13)
    w13, w2 = random_experts(6, 40, 72, torch.float32, gen)
    # both tokens visit experts 1, 4 and 5, in different columns, token 1 twice through expert 4
    topk_ids = torch.tensor([[4, 1, 5], [5, 4, 4]])
    plan = RoutingPlan(topk_ids, torch.tensor([[0.7, -1.5, 2.0], [0.25, 3.0, 0.5]]))
    hidden = torch.randn(2, 40, generator=gen)
    hidden, w13, w2, plan.topk_ids, plan.topk_weights = on(device, hidden, w13, w2, plan.topk_ids, plan.topk_weights)
    out = fused_moe(hidden, w13, w2, plan.topk_ids, plan.topk_weights, DECODE_TILES, single_pass_tokens=0, down_topk_sum_tokens=2)
    torch.testing.assert_close(out, reference(hidden, w13, w2, plan), **tolerance(torch.float32, device))


def brute_force_down_sum(act, w2, topk_ids, topk_weights):
    out = torch.zeros(topk_ids.shape[0], w2.shape[1], dtype=torch.float64)
    for t, j in zip(*torch.nonzero(topk_ids >= 0, as_tuple=True)):
        row = act[t * topk_ids.shape[1] + j].double()
        out[t] += topk_weights[t, j].double() * (w2[topk_ids[t, j]].double() @ row)
    return out


def test_down_topk_sum_never_reads_the_act_rows_of_dropped_assignments(device):
    gen = torch.Generator().manual_seed(21)
    num_tokens, top_k, hidden_size, inter = 3, 4, 40, 600
    _, w2 = random_experts(5, hidden_size, inter, torch.float32, gen)
    topk_ids = torch.tensor([[2, -1, 0, 4], [-1, -1, -1, -1], [1, 3, -1, 2]])
    weights = torch.randn(num_tokens, top_k, generator=gen)
    act = torch.randn(num_tokens * top_k, inter, generator=gen)
    act[(topk_ids < 0).reshape(-1)] = float("nan")  # gate/up leaves these rows unwritten
    out = torch.empty(num_tokens, hidden_size)
    act_d, w2_d, ids_d, weights_d, out_d = on(device, act, w2, topk_ids, weights, out)
    run_down_topk_sum(act_d, w2_d, ids_d, weights_d, out_d, DOWN_TOPK_SUM_TILE)
    assert torch.all(out_d[1] == 0)
    expected = brute_force_down_sum(act, w2, topk_ids, weights).float()
    torch.testing.assert_close(out_d.cpu(), expected, **tolerance(torch.float32, device))


def test_down_topk_sum_overwrites_every_output_element_with_no_zero_fill(device):
    gen = torch.Generator().manual_seed(22)
    num_tokens, top_k, hidden_size, inter = 2, 3, 50, 64
    _, w2 = random_experts(4, hidden_size, inter, torch.float32, gen)
    topk_ids = torch.tensor([[0, 3, 1], [2, 0, 3]])
    weights = torch.rand(num_tokens, top_k, generator=gen)
    act = torch.randn(num_tokens * top_k, inter, generator=gen)
    act_d, w2_d, ids_d, weights_d, out = on(device, act, w2, topk_ids, weights, torch.full((num_tokens, hidden_size), float("nan")))
    run_down_topk_sum(act_d, w2_d, ids_d, weights_d, out, TileConfig(16, 32))
    torch.testing.assert_close(out.cpu(), brute_force_down_sum(act, w2, topk_ids, weights).float(), **tolerance(torch.float32, device))


def test_down_topk_sum_tokens_must_not_be_negative():
    with pytest.raises(ValueError, match="down_topk_sum_tokens"):
        TritonMoEParams(down_topk_sum_tokens=-1)


COMPILE_EXPERTS_KERNELS_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from moeframe.experts import _fused_moe_kernels as kernels

POINTERS = {"x_ptr": "*bf16", "w13_ptr": "*bf16", "w2_ptr": "*bf16", "act_ptr": "*bf16", "topk_ids_ptr": "*i64",
            "sorted_ids_ptr": "*i32", "block_expert_ptr": "*i32", "num_rows_ptr": "*i32"}
TILES = {
    "gate_up_silu_kernel": {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1, "ONE_PER_BLOCK": False},
    "down_weighted_kernel": {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1, "ONE_PER_BLOCK": True},
    "down_topk_sum_kernel": {"BLOCK_N": DOWN_BLOCK_N, "BLOCK_K": DOWN_BLOCK_K, "BLOCK_TOPK": 8},
    "align_kernel": {"BLOCK_M": 16, "CHUNK": 128, "BLOCK_E": 128},
    "single_pass_moe_kernel": {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128},
}
for name, tile in TILES.items():
    kernel = getattr(kernels, name)
    constexprs = {**tile, "USE_PDL": True}
    signature, attrs = {}, {}
    for i, arg in enumerate(kernel.arg_names):
        if arg in constexprs or (arg.startswith("stride_") and arg.endswith("k")):
            # unit strides, as the JIT specialises them
            constexprs.setdefault(arg, 1)
            signature[arg] = "constexpr"
            continue
        is_ptr = arg.endswith("_ptr")
        signature[arg] = POINTERS.get(arg, "*fp32") if is_ptr else "i32"
        if is_ptr or arg.startswith("stride_") or arg in ("N", "K", "inter", "hidden"):
            attrs[(i,)] = [["tt.divisibility", 16]]  # as the JIT specialises them at OLMoE's shape
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32), options={"launch_pdl": True, "num_stages": 4})
    ptx = compiled.asm["ptx"]
    print(name, "griddepcontrol.wait" in ptx, "cp.async.cg" in ptx)
"""


def test_every_experts_kernel_compiles_for_sm90_with_pdl_and_the_down_sum_loop_is_pipelined() -> None:
    script = COMPILE_EXPERTS_KERNELS_FOR_SM90.replace("DOWN_BLOCK_N", str(DOWN_TOPK_SUM_TILE.block_n))
    script = script.replace("DOWN_BLOCK_K", str(DOWN_TOPK_SUM_TILE.block_k))
    stdout = compile_for_sm90(script)
    flags = {line.split()[0]: line.split()[1:] for line in stdout.strip().split("\n")}
    assert len(flags) == 5 and all(wait == "True" for wait, _ in flags.values()), flags
    # cp.async: the K loop's weight tiles are prefetched num_stages - 1 ahead, not loaded and waited on
    assert flags["down_topk_sum_kernel"][1] == "True", flags
