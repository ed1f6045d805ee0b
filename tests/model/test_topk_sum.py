"""A deferred top-k sum (model/layers/topk_sum.py): the norm that takes it gives the numbers of the separate sum then add_rms_norm."""

from __future__ import annotations

import shutil

import pytest
import torch

from moeframe.model.layers.norm import RMSNorm, add_rms_norm, add_topk_rms_norm
from moeframe.model.layers.topk_sum import (
    PendingTopkSum,
    assignment_total,
    plus,
    reduced,
    round_as_stored,
    sum_assignments,
)

DTYPES = (torch.float32, torch.bfloat16)


def wide_range(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Values whose magnitudes span many binades, so that summation order and rounding both show in the last bits."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * torch.exp(3 * torch.randn(shape, generator=gen))).to(dtype)


def separate(parts: torch.Tensor, addend: torch.Tensor | None, residual: torch.Tensor, norm: RMSNorm):
    """Today's path without the deferral: sum_assignments, MoEBlock's shared-expert add, then add_rms_norm."""
    out = sum_assignments(parts)
    if addend is not None:
        out = out + addend
    return add_rms_norm(out, residual, norm.weight, norm.eps)


def random_norm(hidden: int, dtype: torch.dtype) -> RMSNorm:
    norm = RMSNorm(hidden, 1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(wide_range((hidden,), dtype, seed=99))
    return norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("tokens", "top_k", "hidden"), [(1, 8, 64), (3, 6, 48), (5, 1, 33), (2, 8, 2048)])
@pytest.mark.parametrize("with_addend", [False, True])
def test_norm_of_a_pending_sum_equals_the_separate_sum_then_add_rms_norm_bitwise(dtype, tokens, top_k, hidden, with_addend):
    parts = wide_range((tokens, top_k, hidden), dtype, seed=1)
    addend = wide_range((tokens, hidden), dtype, seed=2) if with_addend else None
    residual = wide_range((tokens, hidden), dtype, seed=3)
    norm = random_norm(hidden, dtype)
    normed, total = norm.add_forward(PendingTopkSum(parts, addend), residual)
    want_normed, want_total = separate(parts, addend, residual, norm)
    assert normed.dtype == want_normed.dtype and total.dtype == want_total.dtype
    assert torch.equal(total, want_total)
    assert torch.equal(normed, want_normed)


@pytest.mark.parametrize("dtype", DTYPES)
def test_first_layer_norm_of_a_pending_sum_normalises_the_reduced_rows(dtype):
    parts = wide_range((3, 4, 40), dtype, seed=4)
    norm = random_norm(40, dtype)
    normed, residual = norm.add_forward(PendingTopkSum(parts), None)
    assert torch.equal(residual, sum_assignments(parts))
    assert torch.equal(normed, norm(sum_assignments(parts)))


def test_gathered_rows_of_a_pending_sum_sum_to_the_gathered_sums():
    parts, addend = wide_range((6, 3, 16), torch.bfloat16, seed=5), wide_range((6, 16), torch.bfloat16, seed=6)
    rows = torch.tensor([4, 0, 5])
    pending = PendingTopkSum(parts, addend)
    assert torch.equal(pending[rows].reduce(), pending.reduce()[rows])


def test_plus_adds_after_the_rounded_sum_as_the_shared_experts_add_does():
    parts = wide_range((4, 5, 24), torch.bfloat16, seed=7)
    first, second = wide_range((4, 24), torch.bfloat16, seed=8), wide_range((4, 24), torch.bfloat16, seed=9)
    once = plus(PendingTopkSum(parts), first)
    assert isinstance(once, PendingTopkSum)
    assert torch.equal(reduced(once), sum_assignments(parts) + first)
    # a second addend, or one of another dtype, sums the pending rows first, then adds
    assert torch.equal(plus(once, second), sum_assignments(parts) + first + second)
    assert torch.equal(plus(PendingTopkSum(parts), first.float()), sum_assignments(parts) + first.float())
    dense = wide_range((4, 24), torch.bfloat16, seed=10)
    assert torch.equal(plus(dense, first), dense + first)


def test_reduced_passes_a_summed_tensor_through():
    dense = torch.randn(3, 8)
    assert reduced(dense) is dense


@pytest.mark.parametrize(
    ("parts", "addend", "message"),
    [
        (torch.zeros(2, 8), None, r"\[T, k, H\]"),
        (torch.zeros(2, 3, 8, dtype=torch.float16), None, "float16"),
        (torch.zeros(2, 3, 8), torch.zeros(2, 4), "addend"),
        (torch.zeros(2, 3, 8), torch.zeros(2, 8, dtype=torch.bfloat16), "addend"),
    ],
)
def test_pending_sum_rejects_what_it_cannot_sum_exactly(parts, addend, message):
    with pytest.raises(ValueError, match=message):
        PendingTopkSum(parts, addend)


def float32_bit_patterns(seed: int) -> torch.Tensor:
    """Every kind of float32: random bit patterns (NaNs with any payload, infinities, subnormals), ties, extremes."""
    gen = torch.Generator().manual_seed(seed)
    random_bits = torch.randint(-(2**31), 2**31 - 1, (1 << 18,), generator=gen, dtype=torch.int64).to(torch.int32)
    ties = torch.tensor([0x3F808000, 0x3F818000, -0x407F8000, 0x7F7F8000, 0x00008000, 0x00018000], dtype=torch.int32)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 3.4028235e38, -1e-45])
    return torch.cat([random_bits.view(torch.float32), ties.view(torch.float32), special])


def test_round_as_stored_rounds_to_bfloat16_as_a_cast_does():
    values = float32_bit_patterns(seed=11)
    got, want = round_as_stored(values, torch.bfloat16), values.to(torch.bfloat16)
    same_bits = got.view(torch.int16) == want.view(torch.int16)
    assert bool((same_bits | (got.isnan() & want.isnan())).all())


def test_round_as_stored_keeps_float32_and_refuses_float16():
    values = float32_bit_patterns(seed=12)
    assert round_as_stored(values, torch.float32) is values
    with pytest.raises(ValueError, match="float16"):
        round_as_stored(values, torch.float16)


def sequential_total(parts: torch.Tensor, addend: torch.Tensor | None) -> torch.Tensor:
    """The fold the compiled path runs, written out: float32, assignment 0 first, rounded once, then the addend."""
    acc = parts[:, 0].float()
    for j in range(1, parts.shape[1]):
        acc = acc + parts[:, j].float()
    total = acc.to(parts.dtype)
    return total if addend is None else total + addend


@pytest.mark.skipif(shutil.which("g++") is None, reason="Inductor's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_assignment_total_is_the_float32_fold_rounded_to_the_dtype(dtype):
    """Traced by Inductor the sum becomes pointwise ops; the rounding to bfloat16 must survive fusion."""
    compiled = torch.compile(assignment_total, dynamic=True)
    parts, addend = wide_range((3, 8, 64), dtype, seed=13), wide_range((3, 64), dtype, seed=14)
    for extra in (None, addend):
        got = compiled(parts, extra)
        assert got.dtype == dtype
        assert torch.equal(got, sequential_total(parts, extra))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the Inductor kernels of the decode path")
@pytest.mark.parametrize("tokens", [1, 4])
@pytest.mark.parametrize("with_addend", [False, True])
def test_cuda_norm_of_a_pending_sum_equals_the_separate_kernels_bitwise(tokens, with_addend):
    """On CUDA both paths are Inductor kernels. The values are multiples of 2^-8 under 8 in magnitude, so every
    float32 sum of eight is exact and the order of the k-sum cannot show: what is checked is the rounding."""
    gen = torch.Generator().manual_seed(tokens)
    hidden, dtype = 2048, torch.bfloat16

    def exact(*shape: int) -> torch.Tensor:
        return (torch.randint(-2047, 2048, shape, generator=gen) / 256).to(dtype).cuda()

    parts, residual = exact(tokens, 8, hidden), exact(tokens, hidden)
    addend = exact(tokens, hidden) if with_addend else None
    norm = random_norm(hidden, dtype).cuda()
    got = add_topk_rms_norm(parts, addend, residual, norm.weight, norm.eps)
    want = separate(parts, addend, residual, norm)
    assert torch.equal(got[1], want[1])
    assert torch.equal(got[0], want[0])
