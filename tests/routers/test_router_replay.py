"""router=replay: following native's recorded routes reproduces native exactly; other routes are followed as given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moeframe import Engine, SamplingParams
from moeframe.attention.batch import ForwardBatch
from moeframe.model.layers.routes import StepRoutes
from moeframe.model.presets import PRESETS, tiny_presets

MOE_PRESETS = [p for p in tiny_presets() if PRESETS[p].config_class not in ("LlamaConfig", "Qwen2Config")]
RECORD = SamplingParams(max_new_tokens=8, ignore_eos=True, logprobs=5, return_routed_experts=True)


def make_engine(path: Path, *overrides: str) -> Engine:
    base = [f"model.path={path}", "device=cpu", "dtype=float32", "cache=none", "runner.routes=true"]
    return Engine.from_overrides([*base, *overrides])


def prompt(vocab: int, n: int = 12, seed: int = 5) -> list[int]:
    return torch.randint(1, min(vocab, 2000), (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def forward_logits(engine: Engine, ids: list[int], replay: torch.Tensor | None) -> torch.Tensor:
    """All-token logits of one prefill over ``ids``, following ``replay`` [len, L, k] when given."""
    runner = engine.built.runner
    slots = engine.built.cache.allocate([], len(ids))
    try:
        batch = ForwardBatch.build([ids], [slots], runner.device, all_logits=True)
        return runner.forward(batch, StepRoutes(runner.moe_index, replay=replay))
    finally:
        engine.built.pool.free(slots)


@pytest.mark.parametrize("preset", MOE_PRESETS)
def test_replaying_native_routes_reproduces_native(preset: str, checkpoint_factory) -> None:
    path = checkpoint_factory(preset)
    native = make_engine(path)
    ids = prompt(native.spec.vocab_size)
    recorded = native.generate([ids], RECORD)[0]
    replay = make_engine(path, "router=replay")
    params = SamplingParams(max_new_tokens=8, ignore_eos=True, logprobs=5, return_routed_experts=True, replay_routes=recorded.routed_experts)
    replayed = replay.generate([ids], params)[0]
    assert replayed.token_ids == recorded.token_ids
    assert replayed.logprobs == recorded.logprobs  # float for float
    assert torch.equal(replayed.routed_experts, recorded.routed_experts)
    sequence = ids + recorded.token_ids[:-1]
    assert torch.equal(forward_logits(replay, sequence, recorded.routed_experts.long()), forward_logits(native, sequence, None))


def test_other_routes_are_followed(checkpoint_factory) -> None:
    path = checkpoint_factory("tiny-mixtral")
    native = make_engine(path)
    ids = prompt(native.spec.vocab_size)
    recorded = native.generate([ids], RECORD)[0].routed_experts
    num_experts = native.spec.moe.num_experts
    shifted = (recorded + 1) % num_experts  # every token to other experts
    shifted[3:5] = -1  # two tokens without given routes route natively
    replay = make_engine(path, "router=replay")
    out = replay.generate([ids], SamplingParams(max_new_tokens=4, ignore_eos=True, return_routed_experts=True, replay_routes=shifted))[0]
    given = len(ids) + 3
    assert torch.equal(out.routed_experts[:3], shifted[:3])
    assert torch.equal(out.routed_experts[3:5], recorded[3:5])  # the same tokens, routed natively
    assert torch.equal(out.routed_experts[5:given], shifted[5:given])
    logits = forward_logits(replay, ids, shifted[: len(ids)].long())
    assert not torch.allclose(logits, forward_logits(native, ids, None))


def test_routes_file_replays_by_prompt(checkpoint_factory, tmp_path: Path) -> None:
    path = checkpoint_factory("tiny-olmoe")
    native = make_engine(path)
    prompts = [prompt(native.spec.vocab_size, n, seed=n) for n in (7, 10)]
    outs = [native.generate([p], RECORD)[0] for p in prompts]  # one batch each: a batch-mate's experts change float sums
    edited = (outs[1].routed_experts + 1) % native.spec.moe.num_experts
    lines = [
        {"prompt_ids": prompts[0], "routed_experts": outs[0].routed_experts.tolist()},
        {"prompt_ids": prompts[1], "routed_experts": edited.tolist()},
    ]
    routes_file = tmp_path / "routes.jsonl"
    routes_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    replay = make_engine(path, "router=replay", f"router.routes_file={routes_file}")
    again = [replay.generate([p], RECORD)[0] for p in prompts]
    assert again[0].token_ids == outs[0].token_ids and again[0].logprobs == outs[0].logprobs
    assert torch.equal(again[1].routed_experts[: len(prompts[1])], edited[: len(prompts[1])])
    unknown = prompt(native.spec.vocab_size, 5, seed=9)  # no line for it: routed natively
    alone = replay.generate([unknown], RECORD)[0]
    assert torch.equal(alone.routed_experts, native.generate([unknown], RECORD)[0].routed_experts)


def test_replay_routes_are_checked(checkpoint_factory) -> None:
    path = checkpoint_factory("tiny-olmoe")
    native = make_engine(path)
    good = torch.zeros(3, sum(native.spec.sparse_layers), 2, dtype=torch.long)
    out = native.generate([[1, 2, 3]], SamplingParams(max_new_tokens=2, replay_routes=good))[0]
    assert out.finish_reason == "error" and "router=replay" in out.error
    replay = make_engine(path, "router=replay")
    for bad, words in ((good[:, :1], "MoE layers"), (good + 99, "experts in"), ([[1, 2]], "laid out")):
        out = replay.generate([[1, 2, 3]], SamplingParams(max_new_tokens=2, replay_routes=bad))[0]
        assert out.finish_reason == "error" and words in out.error, out.error


def test_replayed_kv_is_not_shared_through_the_cache(checkpoint_factory) -> None:
    """KV depends on the routing that computed it: a replaying request neither reuses cached KV nor leaves its own."""
    path = checkpoint_factory("tiny-mixtral")
    engine = make_engine(path, "router=replay", "cache=radix")
    ids = prompt(engine.spec.vocab_size, 20)
    first = engine.generate([ids], RECORD)[0]
    shifted = (first.routed_experts + 1) % engine.spec.moe.num_experts
    params = SamplingParams(max_new_tokens=8, ignore_eos=True, return_routed_experts=True, replay_routes=shifted)
    replayed = engine.generate([ids], params)[0]
    assert replayed.cached_tokens == 0 and torch.equal(replayed.routed_experts, shifted)
    again = engine.generate([ids], RECORD)[0]  # native again: the first request's KV, not the replayed one's
    assert again.cached_tokens > 0
    assert again.token_ids == first.token_ids and torch.equal(again.routed_experts, first.routed_experts)


def test_replaying_deepseek_v2_routes_reproduces_native(tmp_path: Path) -> None:
    import transformers

    from moeframe.model.checkpoint_maker import make_checkpoint

    kwargs = PRESETS["tiny-deepseek-v3"].kwargs | dict(topk_method="group_limited_greedy", n_group=4, topk_group=2, num_experts_per_tok=3)
    path = make_checkpoint(transformers.DeepseekV2Config(**kwargs), tmp_path / "v2", seed=4)
    native = make_engine(path)
    ids = prompt(native.spec.vocab_size)
    recorded = native.generate([ids], RECORD)[0]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True, logprobs=5, replay_routes=recorded.routed_experts)
    replayed = make_engine(path, "router=replay").generate([ids], params)[0]
    assert replayed.token_ids == recorded.token_ids and replayed.logprobs == recorded.logprobs
