"""Gate/up + SiLU as one GEMV per assignment, against a per-assignment brute force."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_inputs import random_experts, random_plan, tolerance
from sm90_compile import compile_for_sm90

from moeframe.experts.gate_up_gemv import TILE_BYTES, gate_up_gemv_rows, run_gate_up_gemv


def brute_force_gate_up(x: torch.Tensor, w13: torch.Tensor, flat_ids: torch.Tensor, top_k: int) -> torch.Tensor:
    """silu(gate) * up in float32 for each routed assignment, rounded once; NaN rows for dropped ones."""
    inter = w13.shape[1] // 2
    out = torch.full((flat_ids.numel(), inter), float("nan"))
    for a, expert in enumerate(flat_ids.tolist()):
        if expert >= 0:
            gate_up = w13[expert].float() @ x[a // top_k].float()
            out[a] = F.silu(gate_up[:inter]) * gate_up[inter:]
    return out.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("num_tokens", "top_k", "hidden", "inter"), [(1, 8, 64, 96), (2, 4, 100, 40), (3, 2, 600, 48)])
def test_gate_up_gemv_equals_the_brute_force_and_leaves_dropped_rows_untouched(device, dtype, num_tokens, top_k, hidden, inter):
    gen = torch.Generator().manual_seed(num_tokens * 100 + hidden)
    w13, _ = random_experts(10, hidden, inter, dtype, gen)
    plan = random_plan(num_tokens, 10, top_k, drop_fraction=0.3, gen=gen)
    flat_ids = plan.topk_ids.reshape(-1).to(torch.int32)
    x = torch.randn(num_tokens, hidden, generator=gen).to(dtype)
    act = torch.full((flat_ids.numel(), inter), float("nan"), dtype=dtype, device=device)
    run_gate_up_gemv(x.to(device), w13.to(device), flat_ids.to(device), act, top_k)
    torch.testing.assert_close(act.cpu(), brute_force_gate_up(x, w13, flat_ids, top_k), equal_nan=True, **tolerance(dtype, torch.device(device)))


def test_gate_up_gemv_reads_a_strided_token_row(device):
    gen = torch.Generator().manual_seed(4)
    w13, _ = random_experts(3, 32, 16, torch.float32, gen)
    flat_ids = torch.tensor([2, 0], dtype=torch.int32)
    wide = torch.randn(1, 96, generator=gen)
    act = torch.empty(2, 16, device=device)
    run_gate_up_gemv(wide.to(device)[:, 32:64], w13.to(device), flat_ids.to(device), act, 2)
    torch.testing.assert_close(act.cpu(), brute_force_gate_up(wide[:, 32:64], w13, flat_ids, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("hidden", "dtype", "rows"), [(2048, torch.bfloat16, 8), (4096, torch.bfloat16, 4), (5120, torch.float16, 2), (96, torch.float32, 64), (16384, torch.bfloat16, 1)])
def test_gate_up_gemv_tile_holds_the_most_row_pairs_that_fit(hidden, dtype, rows):
    assert gate_up_gemv_rows(hidden, dtype) == rows
    assert 2 * rows * (1 << (hidden - 1).bit_length()) * torch.finfo(dtype).bits // 8 <= TILE_BYTES


def test_gate_up_gemv_refuses_row_pairs_longer_than_its_tile(device):
    assert gate_up_gemv_rows(16385, torch.bfloat16) is None
    with pytest.raises(ValueError, match="H = 16385 is too long"):
        run_gate_up_gemv(torch.zeros(1, 16385, device=device), torch.zeros(2, 8, 16385, device=device),
                         torch.zeros(1, dtype=torch.int32, device=device), torch.empty(1, 4, device=device), 1)


COMPILE_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from moeframe.experts._gate_up_gemv_kernel import gate_up_gemv_kernel as kernel
names = kernel.arg_names
types = {"x_ptr": "*bf16", "w13_ptr": "*bf16", "act_ptr": "*bf16", "topk_ids_ptr": "*i32"}
sig = {n: types.get(n, "i32") for n in names[:12]} | {n: "constexpr" for n in names[12:]}
aligned = [i for i, n in enumerate(names) if n.endswith("_ptr") or n in ("hidden", "inter", "stride_xm", "stride_we", "stride_wn", "stride_am")]
src = ASTSource(fn=kernel, signature=sig, constexprs=dict(BLOCK_N=8, BLOCK_K=2048, WEIGHT_EVICT="", USE_PDL=True),
                attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"launch_pdl": True, "num_warps": 8}).asm["ptx"]
print("griddepcontrol.wait" in ptx, ptx.count("ld.global"))
"""


def test_the_kernel_compiles_for_sm90_with_pdl_and_issues_its_tile_in_16_byte_loads() -> None:
    stdout = compile_for_sm90(COMPILE_FOR_SM90)
    # 2 x 8 rows x 2048 bf16 over 256 threads: 16 vector loads each, plus the expert id and the token row
    wait, loads = stdout.split()
    assert wait == "True" and int(loads) <= 16 + 1 + 2
