"""Parity with transformers: same checkpoint, same logits, same greedy tokens, for every family.

Shapes not in the presets are built with transformers' own config classes:
expert counts that are not powers of two, top-k of 3, several GQA ratios,
norm_topk_prob on and off, several DeepSeek group settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moeframe import Engine, SamplingParams
from moeframe.model.checkpoint_maker import make_checkpoint
from moeframe.model.presets import ensure_checkpoint, make_config, tiny_presets, trained_presets

UNUSUAL_SHAPES = {
    "mixtral-e6-k3-gqa4": ("mixtral", dict(num_local_experts=6, num_experts_per_tok=3, num_attention_heads=8, num_key_value_heads=2)),
    "qwen2moe-e5-k3-norm": ("qwen2_moe", dict(num_experts=5, num_experts_per_tok=3, norm_topk_prob=True)),
    "qwen3moe-e7-nonorm-gqa1": ("qwen3_moe", dict(num_experts=7, num_experts_per_tok=2, norm_topk_prob=False, num_key_value_heads=4, num_attention_heads=4)),
    "olmoe-e10-k3-norm": ("olmoe", dict(num_experts=10, num_experts_per_tok=3, norm_topk_prob=True, num_key_value_heads=2)),
    "deepseek-g2-tg1-k3": ("deepseek_v3", dict(n_routed_experts=6, num_experts_per_tok=3, n_group=2, topk_group=1)),
    "deepseek-g4-tg2-noqlora": ("deepseek_v3", dict(n_routed_experts=12, num_experts_per_tok=4, n_group=4, topk_group=2, q_lora_rank=None, norm_topk_prob=False)),
    "deepseek-g1-dense2": ("deepseek_v3", dict(n_routed_experts=5, num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=2, num_hidden_layers=3)),
    "llama-gqa4-bias": ("llama", dict(num_attention_heads=8, num_key_value_heads=2, attention_bias=True)),
}


@pytest.fixture(scope="module")
def unusual_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("unusual")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            family, overrides = UNUSUAL_SHAPES[name]
            made[name] = make_checkpoint(make_config(family, **overrides), root / name, seed=3)
        return made[name]

    return get


def hf_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager").eval()


def engine_for(path: Path) -> Engine:
    return Engine.from_overrides([f"model.path={path}", "device=cpu", "dtype=float32", "router=native", "cache=none"])


def prompt_ids(vocab: int, n: int = 19, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, min(vocab, 2000), (n,), generator=g).tolist()


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return (torch.linalg.norm(ours - ref) / torch.linalg.norm(ref)).item()


def check_parity(path: Path) -> None:
    engine, ref = engine_for(path), hf_model(path)
    ids = prompt_ids(engine.spec.vocab_size)
    with torch.no_grad():
        ref_logits = ref(torch.tensor([ids])).logits[0]
    assert relative_error(engine.score(ids), ref_logits) < 1e-4

    with torch.no_grad():
        ref_out = ref.generate(
            torch.tensor([ids]), max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=0
        )[0, len(ids) :].tolist()
    out = engine.generate([ids], SamplingParams(max_new_tokens=24, ignore_eos=True))[0]
    assert out.token_ids == ref_out


@pytest.mark.parametrize("preset", tiny_presets())
def test_preset_matches_transformers(preset: str, checkpoint_factory) -> None:
    check_parity(checkpoint_factory(preset))


@pytest.mark.parametrize("shape", sorted(UNUSUAL_SHAPES))
def test_unusual_shape_matches_transformers(shape: str, unusual_checkpoint) -> None:
    check_parity(unusual_checkpoint(shape))


def test_batched_generation_equals_one_at_a_time(checkpoint_factory) -> None:
    engine = engine_for(checkpoint_factory("tiny-mixtral"))
    prompts = [prompt_ids(engine.spec.vocab_size, n, seed=n) for n in (3, 11, 7, 20)]
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    together = [o.token_ids for o in engine.generate(prompts, params)]
    alone = [engine.generate([p], params)[0].token_ids for p in prompts]
    assert together == alone


# DeepSeek-V2's router (softmax, greedy or group-limited by each group's best expert, scaled, never renormalised)
# in V3's tiny sizes; transformers' DeepseekV2Config is the family's own class.
DEEPSEEK_V2_SHAPES = {
    "greedy": dict(topk_method="greedy", routed_scaling_factor=2.5),
    "group-limited": dict(topk_method="group_limited_greedy", n_group=4, topk_group=2, num_experts_per_tok=3),
    "group-limited-singletons-noqlora": dict(
        topk_method="group_limited_greedy", n_routed_experts=6, n_group=6, topk_group=3, num_experts_per_tok=2,
        q_lora_rank=None,
    ),  # fmt: skip
}


@pytest.mark.parametrize("shape", sorted(DEEPSEEK_V2_SHAPES))
def test_deepseek_v2_matches_transformers(shape: str, tmp_path: Path) -> None:
    import transformers

    from moeframe.model.presets import PRESETS

    config = transformers.DeepseekV2Config(**{**PRESETS["tiny-deepseek-v3"].kwargs, **DEEPSEEK_V2_SHAPES[shape]})
    check_parity(make_checkpoint(config, tmp_path / shape, seed=4))


@pytest.mark.parametrize("preset", trained_presets("shipped"))
def test_trained_preset_matches_transformers(preset: str) -> None:
    check_parity(ensure_checkpoint(preset))
