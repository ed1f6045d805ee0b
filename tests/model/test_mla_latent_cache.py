"""MLA's latent KV cache (runner.mla_cache=latent): the decompressed path's logits and tokens at a fraction of its
KV bytes, on DeepSeek checkpoints of several shapes."""

from __future__ import annotations

import pytest
import torch

from moeframe import Engine, SamplingParams
from moeframe.errors import ConfigError
from moeframe.model.checkpoint_maker import make_checkpoint
from moeframe.model.presets import make_config

SHAPES = {
    "q-lora": {},
    "no-q-lora-dense-first": dict(q_lora_rank=None, first_k_dense_replace=2, num_hidden_layers=3),
    "wide-latent": dict(kv_lora_rank=48, qk_rope_head_dim=16, qk_nope_head_dim=8, v_head_dim=24),
}


def engine(path, layout: str, *extra: str) -> Engine:
    """float32; on the CPU unless ``extra`` names a device (a later override wins)."""
    return Engine.from_overrides(
        [f"model.path={path}", "device=cpu", "dtype=float32", f"runner.mla_cache={layout}", *extra]
    )


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_latent_cache_gives_the_decompressed_logits_and_tokens(shape, tmp_path) -> None:
    path = make_checkpoint(make_config("deepseek_v3", **SHAPES[shape]), tmp_path / shape, seed=5)
    decompressed, latent = engine(path, "decompressed"), engine(path, "latent")
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 2000, (n,), generator=g).tolist() for n in (13, 4, 21)]
    expected = decompressed.score(prompts[0])
    assert torch.linalg.norm(latent.score(prompts[0]) - expected) / torch.linalg.norm(expected) < 1e-5
    params = SamplingParams(max_new_tokens=12, ignore_eos=True, logprobs=0)
    for ours, theirs in zip(latent.generate(prompts, params), decompressed.generate(prompts, params), strict=True):
        assert ours.token_ids == theirs.token_ids
        assert [lp["logprob"] for lp in ours.logprobs] == pytest.approx([lp["logprob"] for lp in theirs.logprobs], abs=1e-4)


def test_a_shared_prefix_is_read_back_from_the_latent_cache(checkpoint_factory) -> None:
    path = checkpoint_factory("tiny-deepseek-v3")
    prefix = list(range(5, 29))
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    cold = engine(path, "latent", "cache=none").generate([prefix + [40, 41]], params)[0].token_ids
    warm = engine(path, "latent", "cache=radix")
    warm.generate([prefix + [7]], params)
    assert warm.generate([prefix + [40, 41]], params)[0].token_ids == cold
    assert warm.stats()["cache"]["matched_tokens"] >= len(prefix)


def test_the_engine_reports_kv_bytes_per_token_of_the_latent_layout(checkpoint_factory) -> None:
    path = checkpoint_factory("tiny-deepseek-v3")
    latent, decompressed = engine(path, "latent"), engine(path, "decompressed")
    mla, layers = latent.spec.attention.mla, latent.spec.num_layers
    assert latent.stats()["kv_bytes_per_token"] == (mla.kv_lora_rank + mla.qk_rope_head_dim) * layers * 4
    heads = latent.spec.attention.num_heads
    per_head = mla.qk_nope_head_dim + mla.qk_rope_head_dim + mla.v_head_dim
    assert decompressed.stats()["kv_bytes_per_token"] == heads * per_head * layers * 4


def test_an_unknown_layout_is_refused_with_the_choices(checkpoint_factory) -> None:
    with pytest.raises(ConfigError, match="runner.mla_cache.*decompressed, latent"):
        engine(checkpoint_factory("tiny-deepseek-v3"), "compressed")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))])
def test_the_triton_attention_kernels_read_the_latent_cache(device, checkpoint_factory) -> None:
    """Extend and decode kernels (the interpreter on the CPU) attend over the latent with its values a view of it."""
    path = checkpoint_factory("tiny-deepseek-v3")
    extra = (f"device={device}", "runner.attention=triton", "cache.max_tokens=512")
    prompts = [list(range(3, 20)), list(range(30, 35))]
    params = SamplingParams(max_new_tokens=6, ignore_eos=True, logprobs=0)
    latent = engine(path, "latent", *extra).generate(prompts, params)
    decompressed = engine(path, "decompressed", *extra).generate(prompts, params)
    for ours, theirs in zip(latent, decompressed, strict=True):
        assert ours.token_ids == theirs.token_ids
        assert [lp["logprob"] for lp in ours.logprobs] == pytest.approx([lp["logprob"] for lp in theirs.logprobs], abs=1e-3)
