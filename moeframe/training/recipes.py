"""What to train: a model config, a corpus, and the optimisation settings, under one name.

A recipe's name is the preset that loads its checkpoint. Sizes are chosen so
that the tiny recipes train on two CPU cores in a few minutes and the small
one on one GPU within a single ten-minute device run (training and the router
sweep after it). Optimisation follows small-LM practice (nanoGPT, OLMoE's
recipe scaled down): AdamW with betas (0.9, 0.95), decoupled weight decay on
matrices only, linear warm-up then cosine decay to a tenth, gradient clipping
at 1, and the checkpoint's own load-balancing loss (Switch Transformer's
auxiliary loss, which transformers' MoE classes add when
``output_router_logits`` is on) at the family's published coefficient.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

_TINY_COMMON = dict(max_position_embeddings=1024, tie_word_embeddings=False, rms_norm_eps=1e-5)


@dataclass(frozen=True)
class Recipe:
    description: str
    config_class: str  # a transformers config class; vocab_size and special-token ids come from the tokenizer
    model: dict[str, Any] = field(default_factory=dict)
    vocab_size: int = 2048  # of the BPE trained on the training split
    corpus: str = "shipped"  # shipped | stdlib | python (see moeframe.training.corpus)
    corpus_max_chars: int | None = None  # a path-hash subset of the corpus under this many characters
    tokenizer_max_chars: int = 20_000_000  # characters of the training split the BPE is trained on
    heldout_fraction: float = 0.05
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 1000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    router_aux_loss_coef: float = 0.01
    eval_every: int = 100
    eval_tokens: int = 32_768  # held-out tokens scored at each evaluation
    save_every: int = 100  # steps between resumable training states
    save_dtype: str = "float16"  # float32 | float16 | bfloat16: the dtype the checkpoint is written in
    autocast: str | None = None  # bfloat16: mixed precision on CUDA (float32 master weights)
    experts_implementation: str | None = "grouped_mm"  # transformers' experts kernel; None: its per-expert loop
    deterministic: bool = True  # torch.use_deterministic_algorithms during training
    heldout_sample_chars: int = 65_536  # held-out text shipped beside the checkpoint (heldout.txt)
    seed: int = 0

    def with_overrides(self, pairs: list[str]) -> "Recipe":
        """``key=value`` pairs (values parsed as JSON, else kept as strings); ``model.key`` sets a config kwarg."""
        changes: dict[str, Any] = {}
        model = dict(self.model)
        names = {f.name for f in dataclasses.fields(self)}
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            if not sep:
                raise ValueError(f"override '{pair}' is not key=value")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            if key.startswith("model."):
                model[key[len("model.") :]] = value
            elif key in names and key != "model":
                changes[key] = value
            else:
                raise ValueError(f"unknown recipe key '{key}'; valid keys: {', '.join(sorted(names - {'model'}))}, model.*")
        return dataclasses.replace(self, model=model, **changes)


RECIPES: dict[str, Recipe] = {
    "trained-tiny-olmoe": Recipe(
        "OLMoE-family model of 16 experts, top-4, trained on CPython's standard library (trained weights)",
        "OlmoeConfig",
        dict(
            _TINY_COMMON, hidden_size=96, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, num_experts=16, num_experts_per_tok=4, norm_topk_prob=False, rope_theta=1e4,
        ),
    ),
    "trained-tiny-qwen3-moe": Recipe(
        "Qwen3-MoE-family model of 12 experts, top-2, renormalised, trained on CPython's standard library (trained weights)",
        "Qwen3MoeConfig",
        dict(
            _TINY_COMMON, hidden_size=96, intermediate_size=192, moe_intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=24, num_experts=12, num_experts_per_tok=2,
            norm_topk_prob=True, rope_theta=1e6,
        ),
        router_aux_loss_coef=0.001,
    ),
    "trained-tiny-mixtral": Recipe(
        "Mixtral-family model of 8 experts, top-2, trained on CPython's standard library (trained weights)",
        "MixtralConfig",
        dict(
            _TINY_COMMON, hidden_size=96, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, rope_theta=1e6, sliding_window=None,
        ),
        router_aux_loss_coef=0.02,
    ),
    # trained-tiny-olmoe's dense twin for experiments/moe_vs_dense: same attention, vocabulary and depth,
    # one MLP as wide as its 16 experts together (16 x 64), so the totals match.
    "trained-tiny-dense": Recipe(
        "Llama-family dense model of trained-tiny-olmoe's total size, trained on CPython's standard library (trained weights)",
        "LlamaConfig",
        dict(
            _TINY_COMMON, hidden_size=96, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, rope_theta=1e4,
        ),
    ),
    "trained-olmoe-small": Recipe(
        "OLMoE-family model of ~160 M parameters, 32 experts, top-4, trained on one GPU on the standard library "
        "and installed packages of its Python (trained weights)",
        "OlmoeConfig",
        dict(
            max_position_embeddings=1024, tie_word_embeddings=False, rms_norm_eps=1e-5, hidden_size=512,
            intermediate_size=512, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8,
            num_experts=32, num_experts_per_tok=4, norm_topk_prob=False, rope_theta=1e4,
        ),
        vocab_size=16384,
        corpus="python",
        corpus_max_chars=120_000_000,
        seq_len=512,
        batch_size=64,
        steps=1500,
        lr=1.5e-3,
        warmup_steps=100,
        eval_every=250,
        eval_tokens=262_144,
        save_every=500,
        save_dtype="bfloat16",
        autocast="bfloat16",
        experts_implementation=None,  # grouped_mm wants bfloat16 weights; the loop autocasts the float32 masters
        deterministic=False,
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe '{name}'; valid recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]
