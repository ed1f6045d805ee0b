"""The fused softmax top-k kernel against native.softmax_topk (the torch reference) and a brute-force tie rule."""

from __future__ import annotations

import pytest
import torch

from moeframe.routers.fused_topk import fused_softmax_topk
from moeframe.routers.native import softmax_topk

SHAPES = [(e, k, t) for e in (8, 60, 64, 128) for k in (1, 2, 6, 8) for t in (1, 3, 37)]


def random_logits(num_tokens: int, num_experts: int, seed: int) -> torch.Tensor:
    return torch.randn(num_tokens, num_experts, generator=torch.Generator().manual_seed(seed)) * 2


def assert_same_plan(fused, reference) -> None:
    assert torch.equal(fused.topk_ids.cpu(), reference.topk_ids)
    torch.testing.assert_close(fused.topk_weights.cpu(), reference.topk_weights, rtol=1e-5, atol=1e-6)


def stable_topk(logits: torch.Tensor, k: int, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k by choice score, the lower expert id first among equal scores, and their unbiased probabilities."""
    probs = torch.softmax(logits, dim=-1)
    choice = probs if bias is None else probs + bias
    ids = torch.sort(choice, dim=-1, descending=True, stable=True).indices[:, :k]
    return ids, probs.gather(1, ids)


@pytest.mark.parametrize(("num_experts", "k", "num_tokens"), SHAPES)
def test_fused_topk_picks_the_reference_experts_and_weights(num_experts, k, num_tokens, device):
    logits = random_logits(num_tokens, num_experts, seed=num_experts * 100 + k * 10 + num_tokens)
    fused = fused_softmax_topk(logits.to(device), k, renormalize=False, scale=1.0)
    assert_same_plan(fused, softmax_topk(logits, k, False, 1.0))


@pytest.mark.parametrize(("num_experts", "k", "num_tokens"), [(60, 2, 3), (64, 8, 37), (128, 6, 1), (8, 8, 3)])
def test_fused_topk_renormalises_over_the_k_and_scales(num_experts, k, num_tokens, device):
    logits = random_logits(num_tokens, num_experts, seed=1)
    fused = fused_softmax_topk(logits.to(device), k, renormalize=True, scale=2.5)
    assert_same_plan(fused, softmax_topk(logits, k, True, 2.5))
    torch.testing.assert_close(fused.topk_weights.sum(dim=-1).cpu(), torch.full((num_tokens,), 2.5))


@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize(("num_experts", "k", "num_tokens"), [(60, 6, 37), (128, 8, 3), (8, 2, 1)])
def test_fused_topk_chooses_by_biased_score_and_weights_by_probability(num_experts, k, num_tokens, renormalize, device):
    logits = random_logits(num_tokens, num_experts, seed=2)
    bias = torch.randn(num_experts, generator=torch.Generator().manual_seed(3)) * 0.2
    fused = fused_softmax_topk(logits.to(device), k, renormalize, 1.0, bias.to(device))
    assert_same_plan(fused, softmax_topk(logits, k, renormalize, 1.0, bias))
    assert not torch.equal(fused.topk_ids.cpu(), softmax_topk(logits, k, renormalize, 1.0).topk_ids)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize(("num_experts", "k", "num_tokens"), [(8, 6, 3), (60, 8, 37), (64, 2, 1), (128, 8, 3)])
def test_fused_topk_breaks_exact_ties_toward_the_lower_expert_id(num_experts, k, num_tokens, with_bias, device):
    generator = torch.Generator().manual_seed(4)
    logits = torch.randint(0, 3, (num_tokens, num_experts), generator=generator).float()
    bias = torch.randint(0, 2, (num_experts,), generator=generator).float() * 0.5 if with_bias else None
    fused = fused_softmax_topk(logits.to(device), k, False, 1.0, None if bias is None else bias.to(device))
    ids, weights = stable_topk(logits, k, bias)
    assert torch.equal(fused.topk_ids.cpu(), ids)
    torch.testing.assert_close(fused.topk_weights.cpu(), weights, rtol=1e-5, atol=1e-6)


def test_fused_topk_with_k_equal_to_e_orders_every_expert(device):
    logits = random_logits(3, 60, seed=5)
    fused = fused_softmax_topk(logits.to(device), 60, renormalize=True, scale=1.0)
    assert_same_plan(fused, softmax_topk(logits, 60, True, 1.0))


def test_fused_topk_routes_512_experts(device):
    logits = random_logits(2, 512, seed=6)
    fused = fused_softmax_topk(logits.to(device), 8, renormalize=True, scale=1.0)
    assert_same_plan(fused, softmax_topk(logits, 8, True, 1.0))


def test_fused_topk_takes_blocks_of_tokens_past_decode_sizes(device):
    logits = random_logits(150, 64, seed=7)
    fused = fused_softmax_topk(logits.to(device), 8, renormalize=True, scale=1.0)
    assert_same_plan(fused, softmax_topk(logits, 8, True, 1.0))


def test_fused_topk_reads_strided_logits(device):
    wide = random_logits(3, 128, seed=8)
    logits = wide[:, :64]
    fused = fused_softmax_topk(logits.to(device), 6, renormalize=False, scale=1.0)
    assert_same_plan(fused, softmax_topk(logits, 6, False, 1.0))


def test_fused_topk_rejects_k_above_the_number_of_experts():
    with pytest.raises(ValueError, match="k=9"):
        fused_softmax_topk(torch.zeros(1, 8), 9, renormalize=False, scale=1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_topk_replays_in_a_cuda_graph():
    static_logits = random_logits(4, 64, seed=9).cuda()
    bias = torch.randn(64, generator=torch.Generator().manual_seed(10)).cuda() * 0.1
    softmax_topk(static_logits, 8, True, 1.0, bias)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_plan = softmax_topk(static_logits, 8, True, 1.0, bias)
    new_logits = random_logits(4, 64, seed=11)
    static_logits.copy_(new_logits)
    graph.replay()
    assert_same_plan(static_plan, softmax_topk(new_logits, 8, True, 1.0, bias.cpu()))
