"""Gate/up and down in one launch (moe_gemv_one_launch.py) against the two launches it replaces, bit for bit.

Under the interpreter programs run one after another, so each down tile's
spin finds its gate/up tiles done; what these tests check there is the tile
arithmetic, dropped assignments and that the counters return to zero. The
sm_90 compile check shows what the waits become on an H100. Compiled on a
GPU, the launch's num_warps and down tile differ from the two kernels', and
so may the order of a row's float32 sum: there the results are compared
within rounding, not bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import random_experts, random_plan
from sm90_compile import compile_for_sm90

from moeframe.experts import EXPERTS
from moeframe.experts.down_prefetch import run_down_prefetch
from moeframe.experts.gate_up_gemv import run_gate_up_gemv
from moeframe.experts.moe_gemv_one_launch import counter_elements, run_moe_gemv_one_launch
from moeframe.routers.plan import RoutingPlan


def launch_inputs(num_tokens: int, top_k: int, hidden: int, inter: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    w13, w2 = random_experts(10, hidden, inter, dtype, gen)
    plan = random_plan(num_tokens, 10, top_k, drop_fraction=0.3, gen=gen)
    flat_ids = plan.topk_ids.reshape(-1).to(torch.int32)
    weights = plan.topk_weights.reshape(-1).float()
    x = torch.randn(num_tokens, hidden, generator=gen).to(dtype)
    return x, w13, w2, flat_ids, weights


def nan_rows(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.full((rows, cols), float("nan"), dtype=dtype, device=device)


def two_launches(x, w13, w2, flat_ids, weights, top_k) -> tuple[torch.Tensor, torch.Tensor]:
    act = nan_rows(flat_ids.numel(), w2.shape[2], x.dtype, x.device)
    out = nan_rows(flat_ids.numel(), w2.shape[1], x.dtype, x.device)
    run_gate_up_gemv(x, w13, flat_ids, act, top_k)
    run_down_prefetch(act, w2, weights, flat_ids, out)
    return act, out


def one_launch(x, w13, w2, flat_ids, weights, top_k, counters) -> tuple[torch.Tensor, torch.Tensor]:
    act = nan_rows(flat_ids.numel(), w2.shape[2], x.dtype, x.device)
    out = nan_rows(flat_ids.numel(), w2.shape[1], x.dtype, x.device)
    run_moe_gemv_one_launch(x, w13, w2, flat_ids, weights, act, out, top_k, counters)
    return act, out


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit for bit under the interpreter; within float32-sum rounding where compiled (NaN rows in the same places)."""
    if actual.device.type == "cuda":
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=2e-3, equal_nan=True)
    else:
        assert torch.equal(actual.isnan(), expected.isnan())
        assert torch.equal(actual.nan_to_num(0.0), expected.nan_to_num(0.0))


def zero_counters(num_assignments: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(counter_elements(num_assignments), dtype=torch.int32, device=device)


# (T, k, H, I): several gate/up tiles per assignment and several down tiles, neither dividing its width
SHAPES = [(1, 8, 600, 40), (2, 3, 48, 600), (1, 1, 100, 72), (2, 2, 600, 40)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("num_tokens", "top_k", "hidden", "inter"), SHAPES)
def test_one_launch_equals_the_two_launches_bitwise_with_dropped_assignments(device, dtype, num_tokens, top_k, hidden, inter):
    inputs = [t.to(device) for t in launch_inputs(num_tokens, top_k, hidden, inter, dtype, seed=hidden + inter + num_tokens)]
    counters = zero_counters(num_tokens * top_k, device)
    act, out = one_launch(*inputs, top_k, counters)
    act_ref, out_ref = two_launches(*inputs, top_k)
    assert_same(act, act_ref)  # dropped rows (NaN) untouched by both
    assert_same(out, out_ref)
    assert not torch.any(counters)


def test_a_second_launch_with_the_same_counters_gives_the_same_bits_and_leaves_them_zero(device):
    inputs = [t.to(device) for t in launch_inputs(2, 4, 600, 40, torch.float32, seed=1)]
    counters = zero_counters(8, device)
    first = one_launch(*inputs, 4, counters)
    second = one_launch(*inputs, 4, counters)
    assert torch.equal(first[1], second[1])
    assert torch.equal(first[0].nan_to_num(0.0), second[0].nan_to_num(0.0))
    assert not torch.any(counters)


def test_counters_sized_for_more_assignments_serve_a_smaller_launch(device):
    inputs = [t.to(device) for t in launch_inputs(1, 3, 48, 600, torch.float16, seed=2)]
    counters = zero_counters(16, device)
    act, out = one_launch(*inputs, 3, counters)
    assert_same(out, two_launches(*inputs, 3)[1])
    assert not torch.any(counters)


def test_dropped_and_out_of_range_experts_write_zero_rows_and_leave_act_untouched(device):
    x, w13, w2, _, _ = launch_inputs(2, 2, 600, 40, torch.float32, seed=3)
    flat_ids = torch.tensor([-1, 10, 3, -1], dtype=torch.int32)  # 10 experts: id 10 is out of range
    weights = torch.tensor([0.0, 0.5, 0.8, 0.0])
    inputs = [t.to(device) for t in (x, w13, w2, flat_ids, weights)]
    counters = zero_counters(4, device)
    act, out = one_launch(*inputs, 2, counters)
    assert torch.all(act[[0, 1, 3]].isnan())
    assert torch.equal(out[[0, 1, 3]].cpu(), torch.zeros(3, 600))
    assert_same(out, two_launches(*inputs, 2)[1])
    assert not torch.any(counters)


def test_counters_too_few_for_the_assignments_are_refused(device):
    inputs = [t.to(device) for t in launch_inputs(2, 4, 48, 40, torch.float32, seed=4)]
    with pytest.raises(ValueError, match="at least 18 elements"):
        one_launch(*inputs, 4, zero_counters(7, device))


def routed(num_tokens: int, seed: int, device: torch.device):
    gen = torch.Generator().manual_seed(seed)
    w13, w2 = random_experts(6, 600, 40, torch.float32, gen)
    plan = random_plan(num_tokens, 6, 3, drop_fraction=0.2, gen=gen)
    hidden = torch.randn(num_tokens, 600, generator=gen)
    plan = RoutingPlan(plan.topk_ids.to(device), plan.topk_weights.to(device))
    return hidden.to(device), w13.to(device), w2.to(device), plan


def spy_on_one_launch(monkeypatch) -> list[int]:
    import moeframe.experts.triton_moe as triton_moe

    launched = []

    def run(*args):
        launched.append((args[3].numel(), args[8].numel()))
        run_moe_gemv_one_launch(*args)

    monkeypatch.setattr(triton_moe, "run_moe_gemv_one_launch", run)
    return launched


def test_the_experts_switch_reaches_the_one_launch_kernel_and_equals_the_default_path(device, monkeypatch):
    launched = spy_on_one_launch(monkeypatch)
    one = EXPERTS.build({"name": "triton", "use_tuned_configs": False, "one_launch_gemv": True})
    default = EXPERTS.build({"name": "triton", "use_tuned_configs": False})
    for num_tokens in (1, 2, 1):
        hidden, w13, w2, plan = routed(num_tokens, seed=num_tokens, device=device)
        assert_same(one.forward(hidden, w13, w2, plan), default.forward(hidden, w13, w2, plan))
    # one launch per call at T <= 2 (3 assignments a token), through the component's counters, sized for T = 2
    assert launched == [(3, 14), (6, 14), (3, 14)]


def test_the_one_launch_kernel_is_off_by_default_and_past_two_tokens(device, monkeypatch):
    launched = spy_on_one_launch(monkeypatch)
    one = EXPERTS.build({"name": "triton", "use_tuned_configs": False, "one_launch_gemv": True})
    default = EXPERTS.build({"name": "triton", "use_tuned_configs": False})
    default.forward(*routed(1, seed=5, device=device))
    one.forward(*routed(3, seed=6, device=device))
    assert launched == []


# OLMoE's batch-1 launch as the JIT specializes it (H = 2048, I = 1024, bf16: 8 gate/up row pairs and 32 down
# rows a tile, 16 warps): resources as cuobjdump reports them, and the vector weight loads around the spin.
COMPILE_FOR_SM90 = """
import os, subprocess, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from moeframe.experts._moe_gemv_one_launch_kernel import moe_gemv_one_launch_kernel as kernel
from moeframe.experts.moe_gemv_one_launch import one_launch_warps
pointers = {n: "*bf16" for n in ("x_ptr", "w13_ptr", "w2_ptr", "act_ptr", "out_ptr")}
pointers |= {"weights_ptr": "*fp32", "topk_ids_ptr": "*i32", "counters_ptr": "*i32"}
consts = dict(BLOCK_N_GATE=8, BLOCK_K_GATE=2048, BLOCK_N_DOWN=32, BLOCK_K_DOWN=1024, WEIGHT_EVICT="", USE_PDL=True)
names = kernel.arg_names
sig = {n: "constexpr" if n in consts else pointers.get(n, "i32") for n in names}
aligned = [i for i, n in enumerate(names) if n.endswith("_ptr") or n in ("hidden", "inter") or n.startswith("stride")]
src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
warps = one_launch_warps(8, 2048, 32, 1024)
compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"launch_pdl": True, "num_warps": warps})
lines = compiled.asm["ptx"].splitlines()
spin = next(i for i, line in enumerate(lines) if "ld.global.gpu.acquire" in line)
wide = [i for i, line in enumerate(lines) if "ld.global.v4" in line]
cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
    f.write(compiled.asm["cubin"])
usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
print(warps, sum(i < spin for i in wide), sum(i > spin for i in wide))
print(next(line for line in usage.splitlines() if "REG:" in line))
"""


def test_the_kernel_compiles_for_sm90_at_olmoe_shape_without_spills_with_down_weights_loaded_before_the_spin() -> None:
    counts, resources = compile_for_sm90(COMPILE_FOR_SM90).splitlines()[:2]
    # 16 warps, as gate/up alone; over 512 threads, 8 x 2048 bf16 gate and as many up (4 + 4 16-byte loads a
    # thread) and 32 x 1024 of w2 (8 a thread) are issued before the acquire spin, none after it (the act row)
    warps, before, after = (int(n) for n in counts.split())
    assert (warps, after) == (16, 0)
    assert before == 16
    assert "STACK:0 " in resources and "LOCAL:0 " in resources, resources
