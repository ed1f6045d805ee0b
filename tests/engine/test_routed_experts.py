"""SamplingParams(return_routed_experts=True): each computed token's experts per MoE layer, on every engine path.

The routes returned must be transformers' own choices for the same
checkpoint, token by token and layer by layer (ties within rounding
excepted), whatever path computed them: one prefill, chunked prefill, a
prefix-cache hit (radix or paged), recompute after preemption, overlapped
or plain decode.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from route_reference import assert_routes_match, hf_routes

from moeframe import Engine, SamplingParams
from moeframe.model.presets import PRESETS, tiny_presets

MOE_PRESETS = [p for p in tiny_presets() if PRESETS[p].config_class not in ("LlamaConfig", "Qwen2Config")]
ROUTES = SamplingParams(max_new_tokens=6, ignore_eos=True, return_routed_experts=True)


def make_engine(path: Path, *overrides: str) -> Engine:
    return Engine.from_overrides([f"model.path={path}", "device=cpu", "dtype=float32", "runner.routes=true", *overrides])


def prompt(vocab: int, n: int, seed: int) -> list[int]:
    return torch.randint(1, min(vocab, 2000), (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def check_against_transformers(path: Path, prompt_ids: list[int], out) -> None:
    computed = prompt_ids + out.token_ids[:-1]
    assert out.routed_experts.shape[0] == len(computed)
    ref_ids, _, scores = hf_routes(path, computed)
    assert_routes_match(out.routed_experts, ref_ids, scores)


@pytest.mark.parametrize("preset", MOE_PRESETS)
def test_routes_are_transformers_router_topk(preset: str, checkpoint_factory) -> None:
    path = checkpoint_factory(preset)
    engine = make_engine(path, "cache=none")
    ids = prompt(engine.spec.vocab_size, 13, seed=1)
    out = engine.generate([ids], ROUTES)[0]
    num_moe = sum(engine.spec.sparse_layers)
    assert out.routed_experts.shape == (len(ids) + 5, num_moe, engine.spec.moe.top_k)
    assert out.routed_experts.dtype == torch.int32
    check_against_transformers(path, ids, out)


@pytest.fixture(scope="module")
def olmoe(checkpoint_factory) -> Path:
    return checkpoint_factory("tiny-olmoe")


def test_cached_prefix_keeps_first_routes(olmoe: Path) -> None:
    """A prefix hit returns, for its cached tokens, the routes the first request computed; no cache recomputes them."""
    engine = make_engine(olmoe, "cache=radix")
    first_ids = prompt(engine.spec.vocab_size, 20, seed=2)
    first = engine.generate([first_ids], ROUTES)[0]
    second_ids = first_ids[:16] + prompt(engine.spec.vocab_size, 5, seed=3)
    for overrides in (["cache=radix"], ["cache=paged", "cache.block_size=4"], ["cache=none"]):
        engine = make_engine(olmoe, *overrides)
        engine.generate([first_ids], ROUTES)
        second = engine.generate([second_ids], ROUTES)[0]
        assert second.cached_tokens == (0 if overrides == ["cache=none"] else 16)
        assert torch.equal(second.routed_experts[:16], first.routed_experts[:16]), overrides


@pytest.mark.parametrize(
    "overrides",
    [
        ["scheduler.chunk_size=5"],
        ["runner.overlap=false"],
        ["cache.max_tokens=48", "scheduler.max_batch_tokens=64"],
    ],
    ids=["chunked_prefill", "no_overlap", "preemption"],
)
def test_routes_hold_on_every_path(olmoe: Path, overrides: list[str]) -> None:
    engine = make_engine(olmoe, *overrides)
    prompts = [prompt(engine.spec.vocab_size, n, seed=n) for n in (11, 17, 9)]
    params = SamplingParams(max_new_tokens=12, ignore_eos=True, return_routed_experts=True)
    outs = engine.generate(prompts, params)
    if "cache.max_tokens=48" in overrides:
        assert engine.stats()["num_preemptions"] > 0
    for ids, out in zip(prompts, outs):
        assert out.error is None
        check_against_transformers(olmoe, ids, out)


def test_route_weights_are_the_routers(olmoe: Path) -> None:
    engine = make_engine(olmoe, "runner.routes_weights=true")
    ids = prompt(engine.spec.vocab_size, 9, seed=4)
    out = engine.generate([ids], ROUTES)[0]
    plain = make_engine(olmoe).generate([ids], ROUTES)[0]
    assert out.token_ids == plain.token_ids and torch.equal(out.routed_experts, plain.routed_experts)
    assert plain.routed_expert_weights is None
    ref_ids, ref_weights, _ = hf_routes(olmoe, ids + out.token_ids[:-1])
    assert torch.equal(out.routed_experts.long(), ref_ids)  # no near-tie in this checkpoint and prompt
    torch.testing.assert_close(out.routed_expert_weights, ref_weights, rtol=1e-5, atol=1e-6)


def test_routes_refused_without_runner_routes(olmoe: Path) -> None:
    engine = Engine.from_overrides([f"model.path={olmoe}", "device=cpu", "dtype=float32"])
    out = engine.generate([[1, 2, 3]], ROUTES)[0]
    assert out.finish_reason == "error" and "runner.routes=true" in out.error
    assert engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=2))[0].routed_experts is None


def test_routes_hold_with_jump_forward(olmoe: Path) -> None:
    """Forced runs are computed in an extend step: their routes are the model's, in token order."""
    engine = make_engine(olmoe, "constraint=xgrammar", "constraint.jump_forward=true")
    ids = prompt(engine.spec.vocab_size, 6, seed=8)
    params = SamplingParams(
        max_new_tokens=40, regex=r"The answer is (yes|no)\. Thank you for asking, it was a pleasure\.", return_routed_experts=True
    )
    out = engine.generate([ids], params)[0]
    assert out.error is None and engine.stats()["jump_forward_tokens"] > 0
    computed = out.routed_experts.shape[0]  # a forced run that ends the output is never fed back
    assert len(ids) <= computed <= len(ids) + len(out.token_ids) - 1
    ref_ids, _, scores = hf_routes(olmoe, (ids + out.token_ids)[:computed])
    assert_routes_match(out.routed_experts, ref_ids, scores)


def test_deepseek_v2_routes_are_transformers_router_topk(tmp_path: Path) -> None:
    """DeepSeek-V2's group-limited greedy routing has no tiny preset: one in V3's tiny sizes."""
    import transformers

    from moeframe.model.checkpoint_maker import make_checkpoint

    kwargs = PRESETS["tiny-deepseek-v3"].kwargs | dict(topk_method="group_limited_greedy", n_group=4, topk_group=2, num_experts_per_tok=3)
    path = make_checkpoint(transformers.DeepseekV2Config(**kwargs), tmp_path / "v2", seed=4)
    engine = make_engine(path, "cache=none")
    ids = prompt(engine.spec.vocab_size, 13, seed=1)
    check_against_transformers(path, ids, engine.generate([ids], ROUTES)[0])
