"""experts.defer_topk_sum on and off: the whole model gives the same logits, bit for bit.

The presets cover every reader of a layer's MoE output: the next layer's
input norm before standard attention (OLMoE, Qwen2-MoE) and before MLA
(DeepSeek-V3), the shared experts folded into the pending sum (Qwen2-MoE's
gated one, DeepSeek's), a dense layer between MoE layers' outputs (DeepSeek's
first layer), the gather of the rows that get logits (prefill) and the final
norm.
"""

from __future__ import annotations

import pytest
import torch

import moeframe.model.layers.norm as norm_module
from moeframe import Engine, SamplingParams

PRESETS = ("tiny-olmoe", "tiny-qwen2-moe", "tiny-deepseek-v3")


def engine(path, defer: bool, *extra: str) -> Engine:
    return Engine.from_overrides(
        [f"model.path={path}", "experts=triton", f"experts.defer_topk_sum={str(defer).lower()}", "cache=none", *extra]
    )


def prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in (19, 6)]


def run(eng: Engine) -> tuple[torch.Tensor, list[list[int]], list[list[float]]]:
    """Prefill logits of one prompt, and greedy decode of two together with each step's log-probability."""
    ids = prompts(eng.spec.vocab_size)
    outs = eng.generate(ids, SamplingParams(max_new_tokens=5, ignore_eos=True, logprobs=0))
    return eng.score(ids[0]), [o.token_ids for o in outs], [[lp["logprob"] for lp in o.logprobs] for o in outs]


@pytest.fixture
def deferred_norm_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = norm_module.add_topk_rms_norm

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(norm_module, "add_topk_rms_norm", counted)
    return calls


# experts=triton on CPU tensors runs in Triton's interpreter; with a GPU, Triton compiles for
# CUDA instead and the CUDA-graph test below compares the two paths there.
@pytest.mark.skipif(torch.cuda.is_available(), reason="runs the Triton experts on CPU tensors, which only the interpreter runs")
@pytest.mark.parametrize("preset", PRESETS)
def test_logits_with_the_deferred_topk_sum_equal_those_without(preset, checkpoint_factory, deferred_norm_calls):
    path = checkpoint_factory(preset)
    plain = run(engine(path, False, "device=cpu", "dtype=float32"))
    assert not deferred_norm_calls
    deferred = run(engine(path, True, "device=cpu", "dtype=float32"))
    assert deferred_norm_calls, "no layer handed its output on with the top-k sum pending"
    assert torch.equal(deferred[0], plain[0])
    assert deferred[1:] == plain[1:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("decode_gemv", ["cublas", "fused"])
def test_cuda_graph_greedy_decode_with_the_deferred_topk_sum_equals_without(decode_gemv, checkpoint_factory):
    """bfloat16, CUDA graphs, and the fused-norm qkv GEMV (which sums a pending output first)."""
    path = checkpoint_factory("tiny-olmoe")
    extra = ("device=cuda", "dtype=bfloat16", "runner.cuda_graph=true", f"runner.decode_gemv={decode_gemv}", "cache.max_tokens=4096")
    assert run(engine(path, True, *extra))[1] == run(engine(path, False, *extra))[1]
