"""The fused gate GEMV + softmax top-k launch against the two launches it replaces and the torch reference.

Its fused-norm form (norm_gate_softmax_topk) is checked against norm.py's
add_rms_norm followed by the same routing.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sm90_compile import compile_for_sm90, counted_on_triton

from moeframe.routers.fused_topk import fused_softmax_topk
from moeframe.routers.gate import gate_gemv
from moeframe.model.layers.norm import add_rms_norm
from moeframe.routers.gate_topk import MAX_FUSED_TOKENS, gate_softmax_topk, new_counts, norm_gate_softmax_topk
from moeframe.routers.native import softmax_topk

HIDDEN = 96


def gate_inputs(num_tokens: int, num_experts: int, hidden: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, hidden, generator=generator)
    weight = torch.randn(num_experts, hidden, generator=generator) * (2 / hidden**0.5)
    return x, weight


def choice_bias(num_experts: int, seed: int) -> torch.Tensor:
    return torch.randn(num_experts, generator=torch.Generator().manual_seed(seed)) * 0.1


def fused_plan(x, weight, k, renormalize, scale, bias=None, counts=None, device="cpu"):
    counts = new_counts(torch.device(device)) if counts is None else counts
    bias = None if bias is None else bias.to(device)
    return gate_softmax_topk(x.to(device), weight.to(device), k, renormalize, scale, counts, bias)


def assert_routes_like_the_two_launches_and_torch(fused, x, weight, k, renormalize, scale, bias, device) -> None:
    two_launches = fused_softmax_topk(
        gate_gemv(x.to(device), weight.to(device)), k, renormalize, scale, None if bias is None else bias.to(device)
    )
    reference = softmax_topk(F.linear(x.float(), weight), k, renormalize, scale, bias)
    assert torch.equal(fused.topk_ids.cpu(), two_launches.topk_ids.cpu())
    assert torch.equal(fused.topk_ids.cpu(), reference.topk_ids)
    torch.testing.assert_close(fused.topk_weights.cpu(), two_launches.topk_weights.cpu(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.topk_weights.cpu(), reference.topk_weights, rtol=1e-5, atol=1e-6)


# (experts, k, tokens, renormalize, with_bias): E not a power of two, partial token blocks, the largest fused batch
CASES = [
    (60, 8, 1, True, False),
    (60, 8, 1, False, True),
    (64, 8, 1, True, True),
    (64, 8, 1, False, False),
    (7, 1, 2, False, True),
    (7, 1, 2, True, False),
    (100, 6, 3, True, True),
    (100, 6, 3, False, False),
    (24, 4, 5, False, True),
    (24, 4, 5, True, False),
    (33, 2, 37, True, True),
    (9, 8, MAX_FUSED_TOKENS, False, True),
]


@pytest.mark.parametrize(("num_experts", "k", "num_tokens", "renormalize", "with_bias"), CASES)
def test_fused_gate_topk_routes_like_gate_logits_then_softmax_topk(num_experts, k, num_tokens, renormalize, with_bias, device):
    x, weight = gate_inputs(num_tokens, num_experts, HIDDEN, seed=num_experts * 100 + num_tokens)
    bias = choice_bias(num_experts, seed=k) if with_bias else None
    fused = fused_plan(x, weight, k, renormalize, 2.5, bias, device=device)
    assert_routes_like_the_two_launches_and_torch(fused, x, weight, k, renormalize, 2.5, bias, device)


@settings(max_examples=12, deadline=None)
@given(
    num_experts=st.integers(2, 40),
    k=st.integers(1, 8),
    num_tokens=st.integers(1, 9),
    hidden=st.integers(1, 300),
    renormalize=st.booleans(),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fused_gate_topk_on_random_shapes(num_experts, k, num_tokens, hidden, renormalize, with_bias, seed):
    k = min(k, num_experts)
    x, weight = gate_inputs(num_tokens, num_experts, hidden, seed)
    bias = choice_bias(num_experts, seed + 1) if with_bias else None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    fused = fused_plan(x, weight, k, renormalize, 1.0, bias, device=device)
    assert_routes_like_the_two_launches_and_torch(fused, x, weight, k, renormalize, 1.0, bias, device)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize(("num_experts", "k", "num_tokens"), [(8, 6, 3), (60, 8, 5), (64, 2, 1)])
def test_fused_gate_topk_breaks_exact_ties_toward_the_lower_expert_id(num_experts, k, num_tokens, with_bias, device):
    # small integer activations and weights: every logit is an exact integer in 0..2, whatever the summation order
    generator = torch.Generator().manual_seed(num_experts + k)
    x = torch.zeros(num_tokens, HIDDEN)
    x[:, :2] = 1.0
    weight = torch.zeros(num_experts, HIDDEN)
    weight[:, :2] = torch.randint(0, 2, (num_experts, 2), generator=generator).float()
    bias = torch.randint(0, 2, (num_experts,), generator=generator).float() * 0.5 if with_bias else None
    fused = fused_plan(x, weight, k, False, 1.0, bias, device=device)
    probs = torch.softmax(F.linear(x, weight), dim=-1)
    choice = probs if bias is None else probs + bias
    ids = torch.sort(choice, dim=-1, descending=True, stable=True).indices[:, :k]
    assert torch.equal(fused.topk_ids.cpu(), ids)
    torch.testing.assert_close(fused.topk_weights.cpu(), probs.gather(1, ids), rtol=1e-5, atol=1e-6)


def test_fused_gate_topk_casts_low_precision_activations_as_it_loads(device, low_precision):
    x, weight = gate_inputs(3, 60, HIDDEN, seed=1)
    x = x.to(low_precision)
    fused = fused_plan(x, weight, 8, True, 1.0, device=device)
    assert_routes_like_the_two_launches_and_torch(fused, x, weight, 8, True, 1.0, None, device)


@pytest.mark.parametrize("num_tokens", [1, 37])
def test_fused_gate_topk_leaves_its_counters_at_zero(num_tokens, device):
    counts = new_counts(torch.device(device))
    x, weight = gate_inputs(num_tokens, 12, HIDDEN, seed=2)
    fused_plan(x, weight, 4, True, 1.0, counts=counts, device=device)
    assert not counts.any()


def test_two_fused_launches_on_the_same_counters_both_route_correctly(device):
    counts = new_counts(torch.device(device))
    for seed, (num_tokens, num_experts) in enumerate([(5, 20), (2, 20), (5, 33)]):
        x, weight = gate_inputs(num_tokens, num_experts, HIDDEN, seed=10 + seed)
        fused = fused_plan(x, weight, 3, True, 1.0, counts=counts, device=device)
        assert_routes_like_the_two_launches_and_torch(fused, x, weight, 3, True, 1.0, None, device)


def test_fused_gate_topk_reads_strided_activations(device):
    x, weight = gate_inputs(3, 16, 2 * HIDDEN, seed=3)
    x, weight = x[:, :HIDDEN], weight[:, :HIDDEN].contiguous()
    fused = fused_plan(x, weight, 4, False, 1.0, device=device)
    assert_routes_like_the_two_launches_and_torch(fused, x, weight, 4, False, 1.0, None, device)


def test_fused_gate_topk_rejects_batches_past_its_bound():
    x, weight = gate_inputs(MAX_FUSED_TOKENS + 1, 8, HIDDEN, seed=4)
    with pytest.raises(ValueError, match="tokens"):
        fused_plan(x, weight, 2, False, 1.0)


def test_fused_gate_topk_rejects_k_above_the_number_of_experts():
    x, weight = gate_inputs(1, 8, HIDDEN, seed=5)
    with pytest.raises(ValueError, match="k=9"):
        fused_plan(x, weight, 9, False, 1.0)


EPS = 1e-6


def norm_inputs(num_tokens: int, hidden: int, seed: int, dtype: torch.dtype):
    """An attention output, the residual stream it adds to, and a norm weight around 1."""
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(num_tokens, hidden, generator=generator)
    residual = 2 * torch.randn(num_tokens, hidden, generator=generator)
    norm_weight = 1 + 0.2 * torch.randn(hidden, generator=generator)
    return h.to(dtype), residual.to(dtype), norm_weight.to(dtype)


def fused_norm(h, residual, norm_weight, weight, k, renormalize, scale, bias=None, counts=None, device="cpu", eps=EPS):
    counts = new_counts(torch.device(device)) if counts is None else counts
    bias = None if bias is None else bias.to(device)
    plan, normed, summed = norm_gate_softmax_topk(
        h.to(device), residual.to(device), norm_weight.to(device), eps, weight.to(device), k, renormalize, scale, counts,
        bias,
    )
    return plan, normed.cpu(), summed.cpu()


def assert_close_to_the_last_bits(got: torch.Tensor, expected: torch.Tensor, device) -> None:
    """got equals expected to four units in the last place of its dtype, or four roundings relative to it (1e-5 on CUDA).

    The interpreter sums the squares and takes the reciprocal square root with
    numpy, torch's CPU rms_norm with its own vectorised reduction, so their
    rms can differ in its last bits; the normed row is rounded twice after it
    (to the dtype, then its product with a norm weight that may exceed 1).
    Where the rms is exact the two agree bit for bit (the test below). On CUDA
    the compiled kernel's reciprocal square root is the hardware's approximate
    one, which a float32 row felt beyond 4 ulp on an H100.
    """
    magnitude = expected.abs()
    ulp = torch.nextafter(magnitude, torch.full_like(magnitude, float("inf"))) - magnitude
    # four roundings relative to the value: near the top of a binade a relative error spans twice the ulps it
    # does near the bottom (a 63 x 196 float32 case differed by 5 ulp of a value just under a power of two)
    relative = 4 * torch.finfo(expected.dtype).eps * magnitude
    bound = torch.maximum(4 * ulp, relative if torch.device(device).type == "cpu" else 1e-5 * magnitude)
    assert bool(((got - expected).abs() <= bound).all()), ((got - expected).abs() / ulp).max()


def assert_norms_and_routes_like_add_rms_norm_then_softmax_topk(
    h, residual, norm_weight, weight, k, renormalize, scale, bias, device
):
    plan, normed, summed = fused_norm(h, residual, norm_weight, weight, k, renormalize, scale, bias, device=device)
    expected_normed, expected_sum = add_rms_norm(h, residual, norm_weight, EPS)
    assert torch.equal(summed, expected_sum)
    assert_close_to_the_last_bits(normed, expected_normed, device)
    # the routing of the rows the launch normed: the gate reads exactly what the experts will
    reference = softmax_topk(F.linear(normed.float(), weight), k, renormalize, scale, bias)
    assert torch.equal(plan.topk_ids.cpu(), reference.topk_ids)
    torch.testing.assert_close(plan.topk_weights.cpu(), reference.topk_weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("num_experts", "k", "num_tokens", "renormalize", "with_bias"), CASES)
def test_fused_norm_gate_topk_equals_add_rms_norm_then_softmax_topk(
    num_experts, k, num_tokens, renormalize, with_bias, dtype, device
):
    h, residual, norm_weight = norm_inputs(num_tokens, HIDDEN + 4, seed=num_experts + num_tokens, dtype=dtype)
    _, weight = gate_inputs(1, num_experts, HIDDEN + 4, seed=num_experts)
    bias = choice_bias(num_experts, seed=k) if with_bias else None
    assert_norms_and_routes_like_add_rms_norm_then_softmax_topk(
        h, residual, norm_weight, weight, k, renormalize, 2.5, bias, device
    )


@settings(max_examples=10, deadline=None)
@given(
    num_experts=st.integers(2, 40).filter(lambda e: e & (e - 1)),
    k=st.integers(1, 8),
    num_tokens=st.integers(1, MAX_FUSED_TOKENS),
    hidden=st.integers(1, 300).filter(lambda h: h & (h - 1)),
    renormalize=st.booleans(),
    with_bias=st.booleans(),
    half=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fused_norm_gate_topk_on_random_shapes(num_experts, k, num_tokens, hidden, renormalize, with_bias, half, seed):
    k = min(k, num_experts)
    h, residual, norm_weight = norm_inputs(num_tokens, hidden, seed, torch.float16 if half else torch.float32)
    _, weight = gate_inputs(1, num_experts, hidden, seed + 1)
    bias = choice_bias(num_experts, seed + 2) if with_bias else None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert_norms_and_routes_like_add_rms_norm_then_softmax_topk(
        h, residual, norm_weight, weight, k, renormalize, 1.0, bias, device
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_norm_equals_add_rms_norm_bit_for_bit_where_the_rms_is_exact(dtype, device):
    # 36 of every 96 summed entries are +-1.5 and 60 are +-0.5: the mean square is exactly 1 in any
    # summation order, so the rms is too (eps 0; four tokens, so no padding row takes rsqrt(0));
    # the norm weight's products with 0.5 and 1.5 round in fp16
    hidden, generator = 96, torch.Generator().manual_seed(7)
    magnitudes = torch.where(torch.randperm(hidden, generator=generator) < 36, 1.5, 0.5)
    total = magnitudes * torch.where(torch.rand(4, hidden, generator=generator) < 0.5, -1.0, 1.0)
    residual = torch.randint(-4, 5, (4, hidden), generator=generator).float()
    h, residual = (total - residual).to(dtype), residual.to(dtype)
    norm_weight = (1 + 0.2 * torch.randn(hidden, generator=generator)).to(dtype)
    _, weight = gate_inputs(1, 20, hidden, seed=8)
    _, normed, summed = fused_norm(h, residual, norm_weight, weight, 4, True, 1.0, device=device, eps=0.0)
    expected_normed, expected_sum = add_rms_norm(h, residual, norm_weight, 0.0)
    assert torch.equal(summed, expected_sum) and torch.equal(normed, expected_normed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_norm_gate_topk_over_several_hidden_chunks(dtype, device):
    # five tokens take 4-token blocks, whose programs walk H in 1024-wide chunks: two passes over two chunks
    h, residual, norm_weight = norm_inputs(5, 1100, seed=17, dtype=dtype)
    _, weight = gate_inputs(1, 12, 1100, seed=18)
    bias = choice_bias(12, seed=19)
    assert_norms_and_routes_like_add_rms_norm_then_softmax_topk(h, residual, norm_weight, weight, 3, True, 1.0, bias, device)


def test_fused_norm_gate_topk_reads_strided_rows_and_leaves_its_counters_at_zero(device):
    h, residual, norm_weight = norm_inputs(5, 2 * HIDDEN, seed=9, dtype=torch.float32)
    h, residual = h[:, :HIDDEN], residual[:, HIDDEN:]
    _, weight = gate_inputs(1, 24, HIDDEN, seed=10)
    counts = new_counts(torch.device(device))
    _, normed, summed = fused_norm(h, residual, norm_weight[:HIDDEN], weight, 4, False, 1.0, counts=counts, device=device)
    expected_normed, expected_sum = add_rms_norm(h, residual, norm_weight[:HIDDEN], EPS)
    assert torch.equal(summed, expected_sum)
    assert_close_to_the_last_bits(normed, expected_normed, device)
    assert not counts.any()


def test_fused_norm_gate_topk_rejects_a_residual_of_another_dtype():
    h, residual, norm_weight = norm_inputs(2, HIDDEN, seed=11, dtype=torch.float32)
    _, weight = gate_inputs(1, 8, HIDDEN, seed=12)
    with pytest.raises(ValueError, match="residual"):
        fused_norm(h, residual.half(), norm_weight, weight, 2, False, 1.0)


COMPILE_FUSED_KERNEL = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from moeframe.routers._gate_topk_kernel import gate_softmax_topk_kernel as kernel
pointers = ["*bf16"] * 5 + ["*fp32", "*fp32", "*fp32", "*i32", "*i64", "*fp32"]
types = pointers + ["i32"] * 7 + ["fp32"] * 2 + ["constexpr"] * 9
for norm, row_in_tile in ((False, True), (True, True), (True, False)):
    constexprs = {"NORM": norm, "ROW_IN_TILE": row_in_tile, "HAS_BIAS": False, "RENORMALIZE": True, "BLOCK_T": 1,
                  "BLOCK_H": 2048 if row_in_tile else 1024, "BLOCK_E": 64, "BLOCK_K": 8, "USE_PDL": True}
    src = ASTSource(fn=kernel, signature=dict(zip(kernel.arg_names, types)), constexprs=constexprs)
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"launch_pdl": True}).asm["ptx"]
    print(norm, row_in_tile, "griddepcontrol.wait" in ptx, "atom.global.gpu.acq_rel.add" in ptx)
"""


def test_the_fused_kernel_compiles_for_sm90_with_pdl_and_an_acq_rel_count():
    stdout = compile_for_sm90(COMPILE_FUSED_KERNEL)
    assert stdout.split("\n")[:3] == ["False True True True", "True True True True", "True False True True"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_gate_topk_replays_in_a_cuda_graph():
    x, weight = gate_inputs(1, 64, 2048, seed=6)
    static_x, weight, counts = x.to("cuda", torch.bfloat16), weight.cuda(), new_counts(torch.device("cuda"))
    gate_softmax_topk(static_x, weight, 8, False, 1.0, counts)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_plan = gate_softmax_topk(static_x, weight, 8, False, 1.0, counts)
    for seed in (7, 8, 9):
        new_x, _ = gate_inputs(1, 64, 2048, seed=seed)
        static_x.copy_(new_x)
        graph.replay()
        expected = fused_softmax_topk(gate_gemv(static_x, weight), 8, False, 1.0)
        assert torch.equal(static_plan.topk_ids, expected.topk_ids)
        torch.testing.assert_close(static_plan.topk_weights, expected.topk_weights, rtol=1e-5, atol=1e-6)
    assert not counts.any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_norm_gate_topk_replays_in_a_cuda_graph():
    h, residual, norm_weight = (t.cuda() for t in norm_inputs(1, 2048, seed=13, dtype=torch.bfloat16))
    _, weight = gate_inputs(1, 64, 2048, seed=14)
    weight, counts = weight.cuda(), new_counts(torch.device("cuda"))
    norm_gate_softmax_topk(h, residual, norm_weight, EPS, weight, 8, True, 1.0, counts)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_plan, static_normed, static_sum = norm_gate_softmax_topk(
            h, residual, norm_weight, EPS, weight, 8, True, 1.0, counts
        )
    for seed in (15, 16):
        new_h, new_residual, _ = norm_inputs(1, 2048, seed=seed, dtype=torch.bfloat16)
        h.copy_(new_h)
        residual.copy_(new_residual)
        graph.replay()
        expected = gate_softmax_topk(static_normed, weight, 8, True, 1.0, counts)
        assert torch.equal(static_sum, h + residual)
        assert torch.equal(static_plan.topk_ids, expected.topk_ids)
        torch.testing.assert_close(static_plan.topk_weights, expected.topk_weights, rtol=1e-5, atol=1e-6)
    assert not counts.any()


# OLMoE's batch-1 launch (one token, 64 experts, k = 8, two warps): the last program's top-k ranks the experts in
# one count (_topk_kernel.py) instead of k rounds of reductions, each a few barriers.
RANK_TOPK_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from moeframe.routers._gate_topk_kernel import gate_softmax_topk_kernel as kernel
pointers = ["*bf16"] * 5 + ["*fp32", "*fp32", "*fp32", "*i32", "*i64", "*fp32"]
types = pointers + ["i32"] * 7 + ["fp32"] * 2 + ["constexpr"] * 9
constexprs = {"NORM": True, "ROW_IN_TILE": True, "HAS_BIAS": False, "RENORMALIZE": True, "BLOCK_T": 1,
              "BLOCK_H": 2048, "BLOCK_E": 64, "BLOCK_K": 8, "USE_PDL": True}
src = ASTSource(fn=kernel, signature=dict(zip(kernel.arg_names, types)), constexprs=constexprs)
ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"launch_pdl": True, "num_warps": 2}).asm["ptx"]
routing = ptx[ptx.index("atom.global.gpu.acq_rel.add"):]
print(routing.count("bar.sync"), "Loop Header" in routing)
"""


@counted_on_triton("3.9")
def test_the_last_program_routes_one_token_without_a_loop_of_reductions() -> None:
    barriers, loops = compile_for_sm90(RANK_TOPK_FOR_SM90).split()
    assert loops == "False" and int(barriers) <= 10
