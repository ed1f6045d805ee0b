"""The engine on CUDA in bfloat16: every family runs, and CUDA-graph decode equals eager decode."""

from __future__ import annotations

import warnings

import pytest
import torch

from moeframe import Engine, SamplingParams
from moeframe.model.presets import tiny_presets

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def engine(path, *extra: str) -> Engine:
    return Engine.from_overrides(
        [f"model.path={path}", "device=cuda", "dtype=bfloat16", "runner.cuda_graph_batch_sizes=[1,2,4,8]", "cache.max_tokens=4096", *extra]
    )


def prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in (5, 17, 9, 30, 3)]


@pytest.mark.parametrize(
    ("preset", "experts"), [(p, "triton") for p in tiny_presets()] + [("tiny-olmoe", "grouped_mm")]
)
def test_cuda_graph_decode_equals_eager(preset: str, experts: str, checkpoint_factory) -> None:
    path = checkpoint_factory(preset)
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    eager = engine(path, f"experts={experts}", "runner.cuda_graph=false")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphs = engine(path, f"experts={experts}", "runner.cuda_graph=true")
    assert graphs.built.runner.graphs is not None, [str(w.message) for w in caught]
    # Four requests decode as a batch of 4, a captured size: the same kernels
    # run eagerly and replayed, so the tokens must match exactly.
    ids = prompts(eager.spec.vocab_size)[:4]
    assert [o.token_ids for o in graphs.generate(ids, params)] == [o.token_ids for o in eager.generate(ids, params)]


def test_padded_replay_matches_eager_logits(checkpoint_factory) -> None:
    path = checkpoint_factory("tiny-olmoe")
    eager = engine(path, "experts=triton", "runner.cuda_graph=false")
    graphs = engine(path, "experts=triton", "runner.cuda_graph=true")
    ids = prompts(eager.spec.vocab_size)[:3]
    params = SamplingParams(max_new_tokens=6, ignore_eos=True, logprobs=0)
    got = graphs.generate(ids, params)
    want = eager.generate(ids, params)
    for g, w in zip(got, want):
        assert g.token_ids[:3] == w.token_ids[:3]
        assert abs(g.logprobs[1]["logprob"] - w.logprobs[1]["logprob"]) < 0.05


@pytest.mark.parametrize("preset", tiny_presets())
def test_bfloat16_error_no_worse_than_transformers_bfloat16(preset: str, checkpoint_factory) -> None:
    """bf16 rounding flips near-tied routing choices in random models, so the bar is the oracle's own bf16 error.

    The median over several sequences is compared: one flipped choice moves
    one sequence's error a lot, and either implementation may be the unlucky one.
    """
    import statistics

    from transformers import AutoModelForCausalLM

    path = checkpoint_factory(preset)
    ref_engine = Engine.from_overrides([f"model.path={path}", "device=cpu", "dtype=float32"])
    ours_engine = engine(path, "runner.cuda_graph=false")
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).cuda().eval()
    g = torch.Generator().manual_seed(1)
    ours_errors, hf_errors = [], []
    for _ in range(9):
        ids = torch.randint(1, ref_engine.spec.vocab_size, (12,), generator=g).tolist()
        exact = ref_engine.score(ids)
        with torch.no_grad():
            theirs = hf(torch.tensor([ids], device="cuda")).logits[0].float().cpu()
        ours = ours_engine.score(ids).cpu()
        ours_errors.append((torch.linalg.norm(ours - exact) / torch.linalg.norm(exact)).item())
        hf_errors.append((torch.linalg.norm(theirs - exact) / torch.linalg.norm(exact)).item())
    assert statistics.median(ours_errors) <= 1.5 * statistics.median(hf_errors) + 1e-2


# The decode-path switches of issue 6 at batch 1, where their kernels run (the GEMV paths take 1-2 tokens).
BATCH1_SWITCHES = [
    (),
    ("runner.l2_prefetch=true",),
    ("runner.decode_attention_prologue=separate",),
    ("runner.gemv_tail_prefetch=true",),
]
# Switches whose kernels compute the same numbers as the defaults (hints, or the same ops in one launch).
SAME_NUMBERS = {
    ("runner.l2_prefetch=true",),
    ("runner.decode_attention_prologue=separate",),
    ("runner.gemv_tail_prefetch=true",),
}


@pytest.mark.parametrize("switch", BATCH1_SWITCHES, ids=lambda s: s[0] if s else "defaults")
def test_batch1_cuda_graph_decode_equals_eager_under_each_decode_switch(switch: tuple[str, ...], checkpoint_factory) -> None:
    path = checkpoint_factory("tiny-olmoe")
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    eager = engine(path, "experts=triton", "runner.cuda_graph=false", *switch)
    graphs = engine(path, "experts=triton", "runner.cuda_graph=true", *switch)
    ids = prompts(eager.spec.vocab_size)[:1]
    tokens = graphs.generate(ids, params)[0].token_ids
    assert tokens == eager.generate(ids, params)[0].token_ids
    if switch in SAME_NUMBERS:
        assert tokens == engine(path, "experts=triton", "runner.cuda_graph=true").generate(ids, params)[0].token_ids


def test_real_shape_random_weights_run_the_default_workload_from_the_cli(tmp_path) -> None:
    """Issue 21: OLMoE-1B-7B's shape with random weights and its made tokenizer, the fast kernels chosen by auto."""
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "moeframe.run", "model=olmoe-1b-7b", "model.random_weights=true", "device=cuda",
         "workload.num_requests=4", "workload.progress=false", "runner.cuda_graph_batch_sizes=[1,2,4]",
         "workload.fidelity_chunks=2", "workload.fidelity_chunk_tokens=64",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics["experts_kernel"] == "triton" and metrics["errors"] == 0
    assert 4 <= metrics["generated_tokens"] <= 4 * 32 and metrics["fidelity_positions"] == 128
