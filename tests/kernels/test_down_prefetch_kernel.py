"""The down projection that loads its expert weights before the PDL wait, against a per-assignment brute force."""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import random_experts, random_plan, tolerance
from sm90_compile import compile_for_sm90

from moeframe.experts.down_prefetch import TILE_BYTES, down_prefetch_rows, run_down_prefetch


def brute_force_down(act: torch.Tensor, w2: torch.Tensor, weights: torch.Tensor, flat_ids: torch.Tensor) -> torch.Tensor:
    """out[a] = weights[a] * act[a] @ w2[e]^T in float32, zeros for dropped assignments, rounded once."""
    out = torch.zeros(flat_ids.numel(), w2.shape[1])
    for a, expert in enumerate(flat_ids.tolist()):
        if expert >= 0:
            out[a] = weights[a] * (w2[expert].float() @ act[a].float())
    return out.to(act.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("num_tokens", "top_k", "hidden", "inter"), [(1, 8, 64, 96), (2, 4, 100, 40), (3, 2, 48, 600)])
def test_down_prefetch_equals_the_brute_force_with_dropped_assignments(device, dtype, num_tokens, top_k, hidden, inter):
    gen = torch.Generator().manual_seed(num_tokens * 100 + inter)
    _, w2 = random_experts(10, hidden, inter, dtype, gen)
    plan = random_plan(num_tokens, 10, top_k, drop_fraction=0.3, gen=gen)
    flat_ids = plan.topk_ids.reshape(-1).to(torch.int32)
    weights = plan.topk_weights.reshape(-1).float()
    act = torch.randn(flat_ids.numel(), inter, generator=gen).to(dtype)
    out = torch.full((flat_ids.numel(), hidden), float("nan"), dtype=dtype)
    expected = brute_force_down(act, w2, weights, flat_ids)
    on_device = out.to(device)
    run_down_prefetch(act.to(device), w2.to(device), weights.to(device), flat_ids.to(device), on_device)
    torch.testing.assert_close(on_device.cpu(), expected, **tolerance(dtype, torch.device(device)))


def test_down_prefetch_writes_zeros_for_an_all_dropped_token_and_reads_strided_rows(device):
    gen = torch.Generator().manual_seed(5)
    _, w2 = random_experts(4, 32, 64, torch.float32, gen)
    flat_ids = torch.tensor([-1, -1, 2, 0], dtype=torch.int32)
    weights = torch.tensor([0.0, 0.0, 0.7, 0.3])
    wide = torch.randn(4, 128, generator=gen)
    act = wide[:, 32:96]
    out = torch.full((4, 48), float("nan"))[:, :32]
    on_device = out.to(device)
    run_down_prefetch(act.to(device), w2.to(device), weights.to(device), flat_ids.to(device), on_device)
    assert torch.equal(on_device[:2].cpu(), torch.zeros(2, 32))
    torch.testing.assert_close(on_device.cpu(), brute_force_down(act.contiguous(), w2, weights, flat_ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("inter", "dtype", "rows"), [(1024, torch.bfloat16, 16), (1408, torch.bfloat16, 8), (96, torch.float32, 64), (16384, torch.bfloat16, 1)])
def test_down_prefetch_tile_holds_the_most_whole_rows_that_fit(inter, dtype, rows):
    assert down_prefetch_rows(inter, dtype) == rows
    assert rows * (1 << (inter - 1).bit_length()) * torch.finfo(dtype).bits // 8 <= TILE_BYTES


def test_down_prefetch_refuses_rows_longer_than_its_tile(device):
    assert down_prefetch_rows(16385, torch.bfloat16) is None
    w2 = torch.zeros(2, 4, 16385, device=device)
    with pytest.raises(ValueError, match="I = 16385 is too long"):
        run_down_prefetch(torch.zeros(1, 16385, device=device), w2, torch.ones(1, device=device),
                          torch.zeros(1, dtype=torch.int32, device=device), torch.empty(1, 4, device=device))


# As the JIT specializes OLMoE's batch-1 launch: the id and every weight load before the wait, act row and weight after.
COMPILE_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from moeframe.experts._down_prefetch_kernel import down_prefetch_kernel as kernel
names = kernel.arg_names
types = {"act_ptr": "*bf16", "w2_ptr": "*bf16", "out_ptr": "*bf16", "weights_ptr": "*fp32", "topk_ids_ptr": "*i32"}
sig = {n: types.get(n, "i32") for n in names[:12]} | {n: "constexpr" for n in names[12:]}
aligned = [i for i, n in enumerate(names) if n.endswith("_ptr") or n in ("hidden", "inter", "stride_am", "stride_we", "stride_wn", "stride_om")]
src = ASTSource(fn=kernel, signature=sig, constexprs=dict(BLOCK_N=16, BLOCK_K=1024, WEIGHT_EVICT="", USE_PDL=True),
                attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
lines = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"launch_pdl": True, "num_warps": 4}).asm["ptx"].splitlines()
wait = next(i for i, line in enumerate(lines) if "griddepcontrol.wait" in line)
loads = [i for i, line in enumerate(lines) if "ld.global" in line]
print(sum(i < wait for i in loads), sum(i > wait for i in loads))
"""


def test_the_kernel_loads_its_expert_id_and_weights_before_the_pdl_wait() -> None:
    stdout = compile_for_sm90(COMPILE_FOR_SM90)
    # 16 rows x 1024 bf16 over 128 threads: sixteen 16-byte loads each plus the id; after it the act row and the weight
    assert stdout.split() == ["17", "2"]
