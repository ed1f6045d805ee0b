"""Named model shapes: tiny random-weight checkpoints for tests, real shapes for sizing.

Tiny presets cover every family the runtime loads and vary what a loader or a
kernel could silently get wrong: expert counts that are not powers of two,
top-3 routing, GQA ratios of 1, 2 and 4, per-head and full q/k norms, MLA with
a q LoRA, grouped routing, a shared expert with and without a gate, tied
embeddings, and an embedding padded beyond the tokenizer (as Qwen's is).
Real presets carry the published config.json values of their hub checkpoints
and are config-only (too big to write with random weights): they run with
random weights made on the device, and a tokenizer of their exact
vocabulary made once (``ensure_tokenizer``). Trained presets (``trained-*``)
are checkpoints trained here by tools/train_moe.py: the tiny ones ship in
moeframe/data/checkpoints/, the GPU-sized one is trained into the cache; they
are the ones whose perplexity and routing mean something.

``ensure_checkpoint`` writes a tiny preset once into a cache folder keyed by
a hash of its config and the maker's format version, the way the hub cache
keys snapshots by revision, and renames it into place so that concurrent
test workers never see half a folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import tokenizers
import transformers
from transformers import PretrainedConfig

from moeframe.errors import ConfigError
from moeframe.model.checkpoint_maker import FORMAT_VERSION, hub_config_dict, make_checkpoint
from moeframe.model.tokenizer import save_tokenizer, vocab_matched_tokenizer

# Bump when vocab_matched_tokenizer's rules change: cached tokenizers are keyed on it.
TOKENIZER_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Preset:
    """A transformers config class name, its kwargs, and the tokenizer's size (None: config-only)."""

    config_class: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    tokenizer_vocab_size: int | None = None

    @property
    def config_only(self) -> bool:
        return self.tokenizer_vocab_size is None


# Ids of the trained tokenizer's <|endoftext|>; make_checkpoint sets them again from the tokenizer.
_TINY_COMMON = dict(max_position_embeddings=1024, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)

PRESETS: dict[str, Preset] = {
    "tiny-mixtral": Preset(
        "MixtralConfig",
        dict(
            _TINY_COMMON, vocab_size=2048, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, num_local_experts=8, num_experts_per_tok=2,
            rope_theta=1e6, rms_norm_eps=1e-5,
        ),
        2048,
    ),
    "tiny-qwen2-moe": Preset(
        "Qwen2MoeConfig",
        dict(
            _TINY_COMMON, vocab_size=2112, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
            shared_expert_intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, num_experts=6, num_experts_per_tok=3, norm_topk_prob=False,
            rope_theta=1e6, rms_norm_eps=1e-6,
        ),
        2048,
    ),
    "tiny-qwen3-moe": Preset(
        "Qwen3MoeConfig",
        dict(
            _TINY_COMMON, vocab_size=3072, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_experts=10,
            num_experts_per_tok=2, norm_topk_prob=True, rope_theta=1e6, rms_norm_eps=1e-6,
        ),
        3072,
    ),
    "tiny-olmoe": Preset(
        "OlmoeConfig",
        dict(
            _TINY_COMMON, vocab_size=4096, hidden_size=128, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, num_experts=16, num_experts_per_tok=4,
            norm_topk_prob=False, rope_theta=1e4, rms_norm_eps=1e-5,
        ),
        4096,
    ),
    "tiny-deepseek-v3": Preset(
        "DeepseekV3Config",
        dict(
            _TINY_COMMON, vocab_size=2048, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=32,
            kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8,
            num_experts_per_tok=3, n_group=4, topk_group=2, first_k_dense_replace=1, n_shared_experts=1,
            routed_scaling_factor=2.5, norm_topk_prob=True, num_nextn_predict_layers=0, rope_theta=1e4,
            rms_norm_eps=1e-6,
        ),
        2048,
    ),
    "tiny-llama": Preset(
        "LlamaConfig",
        dict(
            _TINY_COMMON, vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, head_dim=16, rope_theta=1e4, rms_norm_eps=1e-6,
        ),
        2048,
    ),
    "tiny-qwen2": Preset(
        "Qwen2Config",
        dict(
            _TINY_COMMON, vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        ),
        2048,
    ),
    # Published config.json values of the hub checkpoints these are named after.
    "olmoe-1b-7b": Preset(
        "OlmoeConfig",
        dict(
            vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
            num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
            norm_topk_prob=False, clip_qkv=None, max_position_embeddings=4096, rope_theta=1e4,
            rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=1, bos_token_id=None,
            eos_token_id=50279,
        ),
    ),
    # A dense model of OLMoE-1B-7B's total size (one MLP 64 x 1024 wide): the MoE-vs-dense baseline.
    "dense-olmoe-1b-7b-size": Preset(
        "LlamaConfig",
        dict(
            vocab_size=50304, hidden_size=2048, intermediate_size=65536, num_hidden_layers=16,
            num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=4096, rope_theta=1e4,
            rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=1, bos_token_id=None,
            eos_token_id=50279,
        ),
    ),
    # A dense model of OLMoE-1B-7B's active size (one MLP 8 x 1024 wide: the width a token runs): the other baseline.
    "dense-olmoe-1b-7b-active": Preset(
        "LlamaConfig",
        dict(
            vocab_size=50304, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
            num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=4096, rope_theta=1e4,
            rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=1, bos_token_id=None,
            eos_token_id=50279,
        ),
    ),
    "qwen1.5-moe-a2.7b": Preset(
        "Qwen2MoeConfig",
        dict(
            vocab_size=151936, hidden_size=2048, intermediate_size=5632, moe_intermediate_size=1408,
            shared_expert_intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
            num_key_value_heads=16, num_experts=60, num_experts_per_tok=4, norm_topk_prob=False,
            decoder_sparse_step=1, max_position_embeddings=8192, rope_theta=1e6, rms_norm_eps=1e-6,
            tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151643,
        ),
    ),
    "mixtral-8x7b": Preset(
        "MixtralConfig",
        dict(
            vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
            max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-5, sliding_window=None,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        ),
    ),
    "qwen3-30b-a3b": Preset(
        "Qwen3MoeConfig",
        dict(
            vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
            num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
            num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, max_position_embeddings=40960,
            rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=151643,
            eos_token_id=151645,
        ),
    ),
    # DeepSeek-V2-Lite's sizes in DeepSeek-V3's config class (V3 routing: sigmoid + correction bias).
    "deepseek-v2-lite-shaped": Preset(
        "DeepseekV3Config",
        dict(
            vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
            num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16, q_lora_rank=None,
            kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
            n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, n_group=1, topk_group=1,
            first_k_dense_replace=1, routed_scaling_factor=1.0, norm_topk_prob=False,
            num_nextn_predict_layers=0, max_position_embeddings=163840, rope_theta=1e4,
            rope_scaling=dict(
                type="yarn", factor=40, beta_fast=32, beta_slow=1, mscale=0.707, mscale_all_dim=0.707,
                original_max_position_embeddings=4096,
            ),
            rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=100000, eos_token_id=100001,
        ),
    ),
}

# The tiny preset each model_type's make_config starts from.
FAMILY_BASES = {
    "mixtral": "tiny-mixtral",
    "qwen2_moe": "tiny-qwen2-moe",
    "qwen3_moe": "tiny-qwen3-moe",
    "olmoe": "tiny-olmoe",
    "deepseek_v3": "tiny-deepseek-v3",
    "llama": "tiny-llama",
    "qwen2": "tiny-qwen2",
}


def tiny_presets() -> list[str]:
    return sorted(name for name, preset in PRESETS.items() if not preset.config_only)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        valid = sorted(PRESETS) + sorted(TRAINED_PRESETS)
        raise ConfigError(f"model.preset: unknown preset '{name}'; valid presets: {', '.join(valid)}")
    return PRESETS[name]


def preset_config(name: str) -> PretrainedConfig:
    """The transformers config of a preset (tiny, real, or trained: read from its checkpoint)."""
    if name in TRAINED_PRESETS:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(ensure_checkpoint(name)))
    preset = get_preset(name)
    return getattr(transformers, preset.config_class)(**preset.kwargs)


def make_config(family: str, **overrides: Any) -> PretrainedConfig:
    """A config of ``family`` (a model_type) built from its tiny preset with ``overrides`` applied."""
    if family not in FAMILY_BASES:
        raise ConfigError(f"unknown family '{family}'; valid families: {', '.join(sorted(FAMILY_BASES))}")
    preset = PRESETS[FAMILY_BASES[family]]
    return getattr(transformers, preset.config_class)(**{**preset.kwargs, **overrides})


def cache_root() -> Path:
    """$MOEFRAME_CACHE, else ~/.cache/moeframe; checkpoints live under its ``checkpoints/``."""
    return Path(os.environ.get("MOEFRAME_CACHE") or Path.home() / ".cache" / "moeframe")


def checkpoint_key(name: str) -> str:
    preset = get_preset(name)
    blob = json.dumps(
        {
            "config": hub_config_dict(preset_config(name)),
            "tokenizer_vocab_size": preset.tokenizer_vocab_size,
            "format_version": FORMAT_VERSION,
            "transformers": transformers.__version__,
        },
        sort_keys=True,
    )
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


# Checkpoints trained by tools/train_moe.py (recipes in moeframe/training/recipes.py; each folder's
# README.md is its model card). "shipped": in moeframe/data/checkpoints/, so no run trains them;
# "cache": trained on a GPU into $MOEFRAME_CACHE/trained/ (too big to ship).
TRAINED_PRESETS: dict[str, str] = {
    "trained-tiny-olmoe": "shipped",
    "trained-tiny-qwen3-moe": "shipped",
    "trained-tiny-dense": "shipped",
    "trained-olmoe-small": "cache",
}
SHIPPED_CHECKPOINTS = Path(__file__).resolve().parent.parent / "data" / "checkpoints"


def trained_presets(where: str | None = None) -> list[str]:
    return sorted(name for name, kind in TRAINED_PRESETS.items() if where is None or kind == where)


def trained_checkpoint_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where a trained preset's checkpoint lives (and where tools/train_moe.py writes it by default).

    A "cache" preset is looked up under ``cache_dir`` (model.cache_dir) when given.
    """
    if TRAINED_PRESETS.get(name) == "shipped":
        return SHIPPED_CHECKPOINTS / name
    return (Path(cache_dir) if cache_dir is not None else cache_root() / "trained") / name


def ensure_checkpoint(preset: str, cache_dir: str | Path | None = None) -> Path:
    """The folder of a preset's checkpoint: a trained one's, or a tiny random one's (seed 0) made on first use."""
    if preset in TRAINED_PRESETS:
        folder = trained_checkpoint_dir(preset, cache_dir)
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"model.preset: the trained checkpoint '{preset}' is not at {folder}; train it with "
                f"`python tools/train_moe.py --recipe {preset}` (add --device cuda for a GPU) or give model.path=DIR"
            )
        return folder
    spec = get_preset(preset)
    if spec.config_only:
        raise ConfigError(
            f"model.preset: '{preset}' is config-only (real shapes, no weights): run it with model.random_weights=true; "
            f"presets with weights: {', '.join(tiny_presets())}"
        )
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "checkpoints"
    return made_once(
        root / checkpoint_key(preset),
        lambda staging: make_checkpoint(
            preset_config(preset), staging, seed=0, tokenizer_vocab_size=spec.tokenizer_vocab_size
        ),
    )


def ensure_tokenizer(preset: str, cache_dir: str | Path | None = None) -> Path:
    """A folder with a tokenizer of exactly the preset's vocabulary and eos id, for its random-weight runs; made once.

    Real shapes have no checkpoint here, so without it no text workload could
    run on them (model/tokenizer.py says how the ids are filled).
    """
    config = preset_config(preset)
    eos = config.eos_token_id
    eos_id = int((eos[0] if isinstance(eos, (list, tuple)) else eos) if eos is not None else 0)
    blob = json.dumps([config.vocab_size, eos_id, TOKENIZER_FORMAT_VERSION, tokenizers.__version__])
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "tokenizers"
    return made_once(
        root / f"tokenizer-{preset}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}",
        lambda staging: save_tokenizer(vocab_matched_tokenizer(config.vocab_size, eos_id), staging),
    )


def made_once(final: Path, make: Callable[[Path], object]) -> Path:
    """``final``, made by ``make`` into a staging folder renamed into place, so concurrent makers never see half of it."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        make(staging)
        os.rename(staging, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
