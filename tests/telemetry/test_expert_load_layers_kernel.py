"""The layers kernel (one launch for many layers' plans) against a brute-force count and the per-layer path."""

from __future__ import annotations

import pytest
import torch
from expert_load_reference import brute_force_counters, random_ids
from sm90_compile import compile_for_sm90

from moeframe.telemetry import expert_load
from moeframe.telemetry.expert_load import LayerPlan, accumulate, accumulate_layers_fused


def zero_counters(num_layers: int, num_experts: int, device: torch.device | str) -> list[torch.Tensor]:
    """counts [L, E], dropped, tokens, unrouted [L], int64 zeros."""
    return [torch.zeros(num_layers, num_experts, dtype=torch.long, device=device)] + [
        torch.zeros(num_layers, dtype=torch.long, device=device) for _ in range(3)
    ]


def run_fused(
    plans: list[LayerPlan], num_layers: int, num_experts: int, device: torch.device, settled: bool = False
) -> list[torch.Tensor]:
    counters = zero_counters(num_layers, num_experts, device)
    on_device = [LayerPlan(p.layer_idx, p.topk_ids.to(device), p.budget_k) for p in plans]
    accumulate_layers_fused(on_device, *counters, settled=settled)
    return [c.cpu() for c in counters]


def per_layer(plans: list[LayerPlan], num_layers: int, num_experts: int) -> list[torch.Tensor]:
    counts, dropped, tokens, unrouted = zero_counters(num_layers, num_experts, "cpu")
    for p in plans:
        row = slice(p.layer_idx, p.layer_idx + 1)
        accumulate(p.topk_ids, counts[p.layer_idx], dropped[row], tokens[row], unrouted[row], p.budget_k)
    return [counts, dropped, tokens, unrouted]


def assert_counters_equal(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    for name, g, e in zip(("counts", "dropped", "tokens", "unrouted"), got, expected, strict=True):
        assert torch.equal(g, e), f"{name}: {g.tolist()} != {e.tolist()}"


@pytest.mark.parametrize("num_tokens", [1, 3, 37])
@pytest.mark.parametrize("k", [1, 2, 8])
@pytest.mark.parametrize("num_experts", [8, 64])
def test_layers_kernel_counts_top_k_plans_as_brute_force(num_experts, k, num_tokens, device):
    layers = [0, 1, 3, 4]  # layer 2 is dense: its row stays zero
    plans = [LayerPlan(layer, random_ids(num_tokens, k, num_experts, seed=layer + 10 * k), k) for layer in layers]
    got = run_fused(plans, 5, num_experts, device)
    assert_counters_equal(got, brute_force_counters(plans, 5, num_experts))
    assert_counters_equal(got, per_layer(plans, 5, num_experts))
    # counting before the PDL wait (the recorder's flush after the last MoE layer's experts) counts the same
    assert_counters_equal(run_fused(plans, 5, num_experts, device, settled=True), got)


@pytest.mark.parametrize("num_tokens", [3, 37])
def test_layers_kernel_clamps_drops_of_expert_choice_plans(num_tokens, device):
    # E columns, mostly -1, a budget of 2; row 0 is kept by every expert, far over its budget
    plans = []
    for layer in range(3):
        ids = random_ids(num_tokens, 16, 16, seed=layer, drop=0.8)
        ids[0] = torch.arange(16)
        plans.append(LayerPlan(layer, ids, 2))
    got = run_fused(plans, 3, 16, device)
    assert_counters_equal(got, brute_force_counters(plans, 3, 16))
    assert_counters_equal(got, per_layer(plans, 3, 16))


def test_layers_kernel_counts_plans_of_different_widths(device):
    plans = [
        LayerPlan(0, random_ids(5, 1, 8, seed=1), 1),
        LayerPlan(1, random_ids(5, 2, 8, seed=2), 2),
        LayerPlan(2, random_ids(5, 8, 8, seed=3, drop=0.7), 2),
        LayerPlan(3, random_ids(5, 2, 8, seed=4), 2),
    ]
    assert sorted(len(g) for g in expert_load._launch_groups(plans)) == [1, 1, 2]
    assert_counters_equal(run_fused(plans, 4, 8, device), brute_force_counters(plans, 4, 8))


def test_layers_kernel_adds_two_plans_of_one_layer(device):
    # a forward that stopped midway leaves layer 0 pending; the next forward's layer 0 joins it
    plans = [LayerPlan(0, random_ids(4, 2, 8, seed=s), 2) for s in range(2)] + [LayerPlan(1, random_ids(4, 2, 8, seed=5), 2)]
    assert_counters_equal(run_fused(plans, 2, 8, device), brute_force_counters(plans, 2, 8))


def test_layers_kernel_reads_plans_through_their_strides(device):
    wide = random_ids(9, 6, 8, seed=7)
    plans = [LayerPlan(0, wide[:, ::3], 2), LayerPlan(1, wide[:, 1::3], 2)]  # column stride 3
    transposed = [LayerPlan(2, random_ids(2, 9, 8, seed=8).t(), 2)]  # row stride 1, column stride 9
    got = run_fused(plans + transposed, 3, 8, device)
    assert_counters_equal(got, brute_force_counters(plans + transposed, 3, 8))


def test_layers_kernel_splits_more_plans_than_one_launch_takes(device, monkeypatch):
    monkeypatch.setattr(expert_load, "MAX_PLANS_PER_LAUNCH", 2)
    plans = [LayerPlan(layer, random_ids(3, 2, 8, seed=layer), 2) for layer in range(5)]
    assert [len(g) for g in expert_load._launch_groups(plans)] == [2, 2, 1]
    assert_counters_equal(run_fused(plans, 5, 8, device), brute_force_counters(plans, 5, 8))


def test_layers_kernel_spreads_long_plans_over_programs(device):
    plans = [LayerPlan(layer, random_ids(600, 8, 64, seed=layer), 8) for layer in range(2)]
    assert_counters_equal(run_fused(plans, 2, 64, device), brute_force_counters(plans, 2, 64))


def test_layers_kernel_skips_plans_without_tokens(device):
    plans = [LayerPlan(0, torch.empty(0, 2, dtype=torch.long), 2), LayerPlan(1, random_ids(3, 2, 8, seed=1), 2)]
    assert len(expert_load._launch_groups(plans)) == 1
    assert_counters_equal(run_fused(plans, 2, 8, device), brute_force_counters(plans, 2, 8))


COMPILE_LAYERS_KERNEL = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from moeframe.telemetry._expert_load_kernel import accumulate_layers_kernel
plans = 16
sig = {"topk_ids_ptrs": ("*i64",) * plans, "layers": ("i32",) * plans}
sig |= {n: "*i64" for n in ("counts_ptr", "dropped_ptr", "tokens_ptr", "unrouted_ptr")}
sig |= {n: "i32" for n in ("num_tokens", "num_columns", "stride_t", "stride_c", "stride_counts", "budget_k")}
sig |= {n: "constexpr" for n in ("NUM_PLANS", "CLAMP_TOTAL", "BLOCK_T", "BLOCK_C", "SETTLED", "USE_PDL")}
for use_pdl, settled in ((False, False), (True, False), (True, True)):
    constexprs = {"NUM_PLANS": plans, "CLAMP_TOTAL": False, "BLOCK_T": 1, "BLOCK_C": 8, "SETTLED": settled, "USE_PDL": use_pdl}
    src = ASTSource(fn=accumulate_layers_kernel, signature=sig, constexprs=constexprs)
    lines = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"launch_pdl": use_pdl}).asm["ptx"].splitlines()
    wait = next((i for i, line in enumerate(lines) if "griddepcontrol.wait" in line), 0)
    adds = [i for i, line in enumerate(lines) if "red.global.gpu.relaxed.add.u64" in line]
    id_loads = [i for i, line in enumerate(lines) if "ld.global" in line and ".b64" in line]
    print(use_pdl, settled, wait > 0, bool(adds) and min(adds) > wait, any(i < wait for i in id_loads))
"""


def test_layers_kernel_compiles_for_sm90_with_and_without_pdl_reading_ids_before_the_wait_when_settled():
    stdout = compile_for_sm90(COMPILE_LAYERS_KERNEL)
    # every count after the wait; settled (the recorder's flush after the last experts), the ids read before it
    assert stdout.split("\n")[:3] == ["False False False True False", "True False True True False", "True True True True True"]
