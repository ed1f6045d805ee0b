"""The add + top-k sum + RMSNorm kernel that lets its successor launch first, against norm.py's torch path."""

from __future__ import annotations

import pytest
import torch
from sm90_compile import compile_for_sm90

from moeframe.model.layers import early_norm
from moeframe.model.layers.norm import add_topk_rms_norm

EPS = 1e-6


def norm_inputs(num_tokens: int, top_k: int, hidden: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    parts = torch.randn(num_tokens, top_k, hidden, generator=gen) / top_k
    addend = torch.randn(num_tokens, hidden, generator=gen)
    residual = 3 * torch.randn(num_tokens, hidden, generator=gen)
    weight = 1 + 0.2 * torch.randn(hidden, generator=gen)
    return parts.to(dtype), addend.to(dtype), residual.to(dtype), weight.to(dtype)


@pytest.mark.parametrize("with_addend", [False, True])
@pytest.mark.parametrize(("num_tokens", "top_k", "hidden"), [(1, 8, 64), (2, 4, 100), (8, 1, 300)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_equals_the_torch_add_topk_rms_norm(device, dtype, num_tokens, top_k, hidden, with_addend):
    parts, addend, residual, weight = norm_inputs(num_tokens, top_k, hidden, dtype, seed=num_tokens + hidden)
    addend = addend if with_addend else None
    expected_normed, expected_total = add_topk_rms_norm(parts, addend, residual, weight, EPS)
    on = [None if t is None else t.to(device) for t in (parts, addend, residual, weight)]
    normed, total = early_norm.topk_add_rms_norm(*on, EPS)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-3, "rtol": 2e-3}
    torch.testing.assert_close(total.cpu(), expected_total, **tol)
    torch.testing.assert_close(normed.cpu(), expected_normed, **tol)


def test_kernel_reads_a_strided_slice_of_the_parts(device):
    parts, _, residual, weight = norm_inputs(2, 3, 64, torch.float32, seed=1)
    wide = torch.zeros(2, 5, 64)
    wide[:, 1:4] = parts
    normed, total = early_norm.topk_add_rms_norm(wide.to(device)[:, 1:4], None, residual.to(device), weight.to(device), EPS)
    expected_normed, expected_total = add_topk_rms_norm(parts, None, residual, weight, EPS)
    torch.testing.assert_close(total.cpu(), expected_total, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(normed.cpu(), expected_normed, atol=1e-5, rtol=1e-5)


def test_the_kernel_is_taken_only_where_pdl_runs(monkeypatch):
    parts, _, residual, _ = norm_inputs(1, 2, 16, torch.float32, seed=2)
    assert not early_norm.applies(parts, residual)  # off by default
    early_norm.set_early_launch_norm(True)
    try:
        assert not early_norm.applies(parts, residual)  # the CPU: no PDL, norm.py's path
        monkeypatch.setattr(early_norm, "pdl_supported", lambda device: True)
        assert early_norm.applies(parts, residual)
        wide_batch = torch.zeros(early_norm.MAX_TOKENS + 1, 2, 16)
        assert not early_norm.applies(wide_batch, torch.zeros(early_norm.MAX_TOKENS + 1, 16))
    finally:
        early_norm.set_early_launch_norm(False)


COMPILE_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from moeframe.model.layers._early_norm_kernel import topk_add_rms_norm_kernel as kernel
names = kernel.arg_names
sig = {n: ("*bf16" if n.endswith("_ptr") else "fp32" if n == "eps" else "i32") for n in names[:14]} | {n: "constexpr" for n in names[14:]}
src = ASTSource(fn=kernel, signature=sig, constexprs=dict(TOP_K=8, HAS_ADDEND=False, BLOCK_H=2048, USE_PDL=True))
ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"launch_pdl": True, "num_warps": 4}).asm["ptx"]
wait = ptx.index("griddepcontrol.wait")
early = ptx[:wait]
print(ptx.index("griddepcontrol.launch_dependents") < wait, early.count("ld.global"), early.count("ld.global.b16"))
"""


def test_the_kernel_lets_its_successor_launch_and_loads_only_the_norm_weight_before_it_waits() -> None:
    # 4 warps over a 2,048-wide bf16 row: 16 elements a thread, one 2-byte load each (the signature gives no alignment)
    stdout = compile_for_sm90(COMPILE_FOR_SM90)
    assert stdout.split() == ["True", "16", "16"]
