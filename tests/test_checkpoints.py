"""Tiny random-weight checkpoints: hub layout, transformers round trip, determinism, tokenizer."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from moeframe.errors import ConfigError
from moeframe.model.checkpoint_maker import make_checkpoint, redraw_weights
from moeframe.model.presets import PRESETS, ensure_checkpoint, make_config, preset_config, tiny_presets
from moeframe.data import sample_text
from moeframe.model.tokenizer import EOS_TOKEN, IM_END, IM_START, train_tokenizer

TINY = tiny_presets()
PROMPT_IDS = torch.tensor([[0, 5, 17, 300, 1000, 42, 7, 1999]])

# Per-expert tensor names of hub checkpoints, per model_type (what real checkpoints on the hub hold).
HUB_EXPERT_NAMES = {
    "mixtral": ("block_sparse_moe.experts.{e}.w1.weight", "block_sparse_moe.experts.{e}.w2.weight",
                "block_sparse_moe.experts.{e}.w3.weight", "block_sparse_moe.gate.weight"),
    "qwen2_moe": ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight",
                  "mlp.experts.{e}.down_proj.weight", "mlp.gate.weight", "mlp.shared_expert.gate_proj.weight",
                  "mlp.shared_expert_gate.weight"),
    "qwen3_moe": ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight",
                  "mlp.experts.{e}.down_proj.weight", "mlp.gate.weight"),
    "olmoe": ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight",
              "mlp.experts.{e}.down_proj.weight", "mlp.gate.weight"),
    "deepseek_v3": ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight",
                    "mlp.experts.{e}.down_proj.weight", "mlp.gate.weight", "mlp.gate.e_score_correction_bias",
                    "mlp.shared_experts.gate_proj.weight"),
}


def saved_tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(folder / "model.safetensors", "pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


def num_experts(config) -> int:
    for attr in ("num_local_experts", "num_experts", "n_routed_experts"):
        if getattr(config, attr, None):
            return getattr(config, attr)
    raise AssertionError("config names no expert count")


def sparse_layer_ids(config) -> list[int]:
    first_dense = getattr(config, "first_k_dense_replace", 0)
    return list(range(first_dense, config.num_hidden_layers))


@pytest.mark.parametrize("preset", TINY)
def test_tiny_preset_loads_in_transformers_with_no_missing_or_unexpected_keys(checkpoint_factory, preset):
    _, info = AutoModelForCausalLM.from_pretrained(checkpoint_factory(preset), output_loading_info=True)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not info["mismatched_keys"]


@pytest.mark.parametrize("preset", TINY)
def test_loaded_checkpoint_gives_the_logits_of_the_in_memory_model(checkpoint_factory, preset):
    loaded = AutoModelForCausalLM.from_pretrained(checkpoint_factory(preset)).eval()
    in_memory = AutoModelForCausalLM.from_config(preset_config(preset), dtype=torch.float32).eval()
    redraw_weights(in_memory, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(PROMPT_IDS).logits, in_memory(PROMPT_IDS).logits, rtol=0, atol=0)


@pytest.mark.parametrize("preset", [p for p in TINY if preset_config(p).model_type in HUB_EXPERT_NAMES])
def test_experts_are_saved_per_expert_under_hub_names(checkpoint_factory, preset):
    config = preset_config(preset)
    names = set(saved_tensors(checkpoint_factory(preset)))
    for layer in sparse_layer_ids(config):
        for expert in range(num_experts(config)):
            for pattern in HUB_EXPERT_NAMES[config.model_type]:
                assert f"model.layers.{layer}.{pattern.format(e=expert)}" in names
    assert not [name for name in names if "gate_up_proj" in name or name.endswith("experts.down_proj")]


@pytest.mark.parametrize("preset", TINY)
def test_norm_weights_are_jittered_around_one(checkpoint_factory, preset):
    norms = {k: v for k, v in saved_tensors(checkpoint_factory(preset)).items() if k.endswith("norm.weight")}
    assert norms
    for name, weight in norms.items():
        assert not torch.equal(weight, torch.ones_like(weight)), name
        assert abs(weight.mean().item() - 1.0) < 0.1, name


@pytest.mark.parametrize("preset", [p for p in TINY if p in ("tiny-qwen2", "tiny-qwen2-moe", "tiny-deepseek-v3")])
def test_biases_and_correction_bias_are_nonzero(checkpoint_factory, preset):
    tensors = saved_tensors(checkpoint_factory(preset))
    biases = {k: v for k, v in tensors.items() if k.endswith("bias")}
    assert biases
    for name, bias in biases.items():
        assert bias.abs().min() > 0, name


def test_correction_bias_is_large_enough_to_change_routing(checkpoint_factory):
    tensors = saved_tensors(checkpoint_factory("tiny-deepseek-v3"))
    bias = torch.cat([v for k, v in tensors.items() if k.endswith("e_score_correction_bias")])
    assert 0.05 < bias.std().item() < 0.2


def test_same_seed_gives_byte_identical_tensors(tmp_path):
    config = make_config("deepseek_v3", num_hidden_layers=2)
    first = saved_tensors(make_checkpoint(config, tmp_path / "a", seed=7))
    again = saved_tensors(make_checkpoint(config, tmp_path / "b", seed=7))
    assert first.keys() == again.keys()
    for name in first:
        assert first[name].numpy().tobytes() == again[name].numpy().tobytes(), name


def test_another_seed_changes_every_tensor(tmp_path):
    config = make_config("qwen2_moe", num_hidden_layers=1)
    first = saved_tensors(make_checkpoint(config, tmp_path / "a", seed=7))
    other = saved_tensors(make_checkpoint(config, tmp_path / "b", seed=8))
    for name in first:
        assert not torch.equal(first[name], other[name]), name


@pytest.mark.parametrize("preset", TINY)
def test_logits_are_neither_uniform_nor_one_hot(checkpoint_factory, preset):
    model = AutoModelForCausalLM.from_pretrained(checkpoint_factory(preset)).eval()
    with torch.no_grad():
        logprobs = model(PROMPT_IDS).logits.log_softmax(-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    uniform = math.log(model.config.vocab_size)
    assert (entropy > 1.0).all() and (entropy < uniform - 0.5).all()


def test_tied_preset_saves_no_lm_head_and_untied_presets_do(checkpoint_factory):
    for preset in TINY:
        has_head = "lm_head.weight" in saved_tensors(checkpoint_factory(preset))
        assert has_head != preset_config(preset).tie_word_embeddings, preset


def test_make_config_overrides_shape_of_written_checkpoint(tmp_path):
    config = make_config("mixtral", num_local_experts=5, num_experts_per_tok=3, num_hidden_layers=1)
    folder = make_checkpoint(config, tmp_path)
    names = saved_tensors(folder)
    assert names["model.layers.0.block_sparse_moe.gate.weight"].shape == (5, config.hidden_size)
    assert "model.layers.0.block_sparse_moe.experts.4.w1.weight" in names
    assert "model.layers.0.block_sparse_moe.experts.5.w1.weight" not in names
    assert AutoModelForCausalLM.from_pretrained(folder).config.num_experts_per_tok == 3


def test_unknown_preset_raises_config_error_listing_valid_presets():
    with pytest.raises(ConfigError) as err:
        ensure_checkpoint("tiny-nonsense")
    for name in PRESETS:
        assert name in str(err.value)


def test_config_only_preset_refuses_to_write_weights():
    with pytest.raises(ConfigError, match="config-only"):
        ensure_checkpoint("mixtral-8x7b")


def test_ensure_checkpoint_reuses_the_cached_folder(tmp_path):
    first = ensure_checkpoint("tiny-llama", cache_dir=tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again = ensure_checkpoint("tiny-llama", cache_dir=tmp_path)
    assert again == first and (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_default_cache_lives_under_moeframe_cache_env(moeframe_cache):
    assert ensure_checkpoint("tiny-qwen2").parent == moeframe_cache / "checkpoints"


# Published total parameter counts of the hub checkpoints the real presets are shaped after.
PUBLISHED_PARAMS = {
    "mixtral-8x7b": 46.7e9,
    "qwen3-30b-a3b": 30.5e9,
    "olmoe-1b-7b": 6.92e9,
    "qwen1.5-moe-a2.7b": 14.3e9,
    "deepseek-v2-lite-shaped": 15.7e9,
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED_PARAMS))
def test_real_preset_has_its_published_parameter_count(preset):
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(preset_config(preset))
    total = sum(p.numel() for p in model.parameters())
    assert total == pytest.approx(PUBLISHED_PARAMS[preset], rel=0.02)


@pytest.mark.parametrize("preset", TINY)
def test_tokenizer_size_matches_preset_and_fits_the_embedding(checkpoint_factory, preset):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_factory(preset))
    assert len(tokenizer) == PRESETS[preset].tokenizer_vocab_size <= preset_config(preset).vocab_size


def test_tokenizer_round_trips_text(checkpoint_factory):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_factory("tiny-qwen2-moe"))
    text = sample_text()[:3000] + "\n  déjà vu, 数字 and emoji 🙂\t<|im_start|>"
    ids = tokenizer.encode(text)
    assert len(ids) < len(text.encode()) / 2
    assert tokenizer.decode(ids) == text


def test_tokenizer_special_tokens_are_single_ids_with_eos_first(checkpoint_factory):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_factory("tiny-mixtral"))
    assert tokenizer.eos_token == tokenizer.bos_token == EOS_TOKEN
    assert tokenizer.eos_token_id == 0
    specials = [tokenizer.convert_tokens_to_ids(t) for t in (EOS_TOKEN, IM_START, IM_END)]
    assert tokenizer.encode(EOS_TOKEN + IM_START + IM_END) == specials
    assert len(set(specials)) == 3


def test_chat_template_renders_chatml(checkpoint_factory):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_factory("tiny-qwen3-moe"))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        f"{IM_START}system\nBe brief.{IM_END}\n{IM_START}user\nHi{IM_END}\n{IM_START}assistant\n"
    )


def test_checkpoint_config_ids_are_the_tokenizers(checkpoint_factory):
    folder = checkpoint_factory("tiny-olmoe")
    config = AutoModelForCausalLM.from_pretrained(folder).config
    eos_id = AutoTokenizer.from_pretrained(folder).eos_token_id
    assert config.bos_token_id == config.eos_token_id == config.pad_token_id == eos_id


def test_tokenizer_training_is_the_same_in_a_fresh_process():
    script = "from moeframe.model.tokenizer import train_tokenizer; print(train_tokenizer(2048).to_str())"
    fresh = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert fresh.stdout.strip() == train_tokenizer(2048).to_str()


def test_tokenizer_refuses_a_vocabulary_smaller_than_bytes_plus_specials():
    with pytest.raises(ValueError, match="at least 259"):
        train_tokenizer(258)
