"""Random-weight checkpoints in the Hugging Face hub's own layout.

No hub download is possible where moeframe is tested, so every test model is
made here: transformers builds the architecture from its config, every
parameter and persistent buffer is re-drawn from a seed, and
``save_pretrained`` writes the hub's per-expert tensor names (transformers 5
fuses experts in memory and un-fuses them on save; see
/work/notes/checkpoint_naming.md). config.json is written as hub checkpoints
spell it (``rope_theta``/``rope_scaling``, ``torch_dtype``, Qwen3-MoE's
``num_experts``), so a loader that reads these folders reads real ones.

Scales: a weight of fan-in ``n`` is N(0, gain/sqrt(n)) with gain 1, and 2 for
the embedding and lm_head, so activations stay O(1) through the layers and
logits have a standard deviation near 2 (peaked enough that greedy decoding is
not a coin toss, never one-hot). Norm weights are 1 + N(0, 0.1) and biases
N(0, 0.02), so a loader that drops either changes the logits. DeepSeek's
``e_score_correction_bias`` is N(0, 0.1), large enough to change which
experts are chosen.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationConfig, PretrainedConfig

from moeframe.model.tokenizer import EOS_TOKEN, save_tokenizer, train_tokenizer

NORM_JITTER_STD = 0.1
BIAS_STD = 0.02
CORRECTION_BIAS_STD = 0.1
EMBEDDING_GAIN = 2.0
# Bump when the drawing rules or the written layout change: cached checkpoints are keyed on it.
FORMAT_VERSION = 1

# transformers-5 config keys renamed back to the names hub checkpoints carry, per model_type.
_HUB_KEY_NAMES = {"qwen3_moe": {"num_local_experts": "num_experts"}}
# Values transformers 5 derives and writes that hub configs lack (DeepSeek's head_dim is its rope dim).
_DERIVED_KEYS = {"deepseek_v3": ("head_dim", "qk_head_dim")}


def _generator(seed: int, name: str) -> torch.Generator:
    """A generator per tensor name: a tensor's values do not depend on the order tensors are drawn in."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _normal(shape: torch.Size, std: float, seed: int, name: str) -> torch.Tensor:
    return torch.randn(shape, generator=_generator(seed, name), dtype=torch.float32) * std


def _draw_parameter(module: nn.Module, name: str, leaf: str, shape: torch.Size, seed: int) -> torch.Tensor:
    if type(module).__name__.endswith("RMSNorm"):
        return 1.0 + _normal(shape, NORM_JITTER_STD, seed, name)
    if leaf == "bias":
        return _normal(shape, BIAS_STD, seed, name)
    if len(shape) < 2:
        raise ValueError(f"no drawing rule for the 1-D parameter {name} of {type(module).__name__}")
    gain = EMBEDDING_GAIN if isinstance(module, nn.Embedding) or name == "lm_head.weight" else 1.0
    return _normal(shape, gain / math.sqrt(shape[-1]), seed, name)


@torch.no_grad()
def redraw_weights(model: nn.Module, seed: int) -> None:
    """Overwrite every parameter and persistent buffer of ``model`` from ``seed``."""
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for leaf, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            param.copy_(_draw_parameter(module, prefix + leaf, leaf, param.shape, seed))
        for leaf, buffer in module.named_buffers(recurse=False):
            if leaf in module._non_persistent_buffers_set:
                continue
            if leaf != "e_score_correction_bias":
                raise ValueError(f"no drawing rule for the persistent buffer {prefix + leaf}")
            buffer.copy_(_normal(buffer.shape, CORRECTION_BIAS_STD, seed, prefix + leaf))


def hub_config_dict(config: PretrainedConfig) -> dict:
    """config.json as hub checkpoints write it, not as transformers 5 renames it."""
    raw = config.to_dict()
    rope = dict(raw.pop("rope_parameters", None) or {})
    if rope:
        raw["rope_theta"] = rope.pop("rope_theta")
        if rope.get("rope_type", "default") != "default":
            rope.setdefault("type", rope["rope_type"])
            raw["rope_scaling"] = rope
    raw.pop("dtype", None)
    raw["torch_dtype"] = "float32"
    for new, old in _HUB_KEY_NAMES.get(config.model_type, {}).items():
        if new in raw:
            raw[old] = raw.pop(new)
    for key in _DERIVED_KEYS.get(config.model_type, ()):
        raw.pop(key, None)
    return raw


def make_checkpoint(
    config: PretrainedConfig,
    out_dir: str | Path,
    seed: int = 0,
    tokenizer_vocab_size: int | None = None,
) -> Path:
    """Write a float32 random-weight checkpoint of ``config`` and its tokenizer into ``out_dir``.

    ``tokenizer_vocab_size`` below ``config.vocab_size`` leaves embedding rows
    no token maps to, as Qwen's padded vocabularies do; it defaults to the
    config's vocabulary.
    """
    tokenizer = train_tokenizer(tokenizer_vocab_size or config.vocab_size)
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise ValueError(
            f"tokenizer_vocab_size {tokenizer.get_vocab_size()} exceeds config.vocab_size {config.vocab_size}"
        )
    config = config.__class__.from_dict(config.to_dict())
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    config.bos_token_id = config.eos_token_id = config.pad_token_id = eos_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    redraw_weights(model, seed)
    model.generation_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    hub_config = hub_config_dict(model.config)
    (out / "config.json").write_text(json.dumps(hub_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_tokenizer(tokenizer, out)
    return out
