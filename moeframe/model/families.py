"""Per-family differences, in one place: HF config -> ModelSpec, and checkpoint names -> ours.

transformers parses config.json (its defaults and RoPE normalisation are the
reference); each family below turns that config into a ModelSpec and says how
its tensor names differ from the shared layout. Everything else is shared.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from moeframe.errors import CheckpointError
from moeframe.model.spec import AttentionSpec, MLASpec, ModelSpec, MoESpec, RopeSpec


@dataclass(frozen=True)
class Family:
    name: str
    parse: Callable[[object], ModelSpec]
    # (pattern, replacement) applied in order to each checkpoint tensor name
    renames: tuple[tuple[str, str], ...] = field(default_factory=tuple)


FAMILIES: dict[str, Family] = {}


def family(model_type: str, renames: tuple[tuple[str, str], ...] = ()) -> Callable:
    def add(parse: Callable[[object], ModelSpec]) -> Callable[[object], ModelSpec]:
        FAMILIES[model_type] = Family(model_type, parse, renames)
        return parse

    return add


def family_of(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"unknown architecture '{model_type}'; supported model_type values: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def rope_of(cfg: object, rotary_dim: int, interleave: bool = False) -> RopeSpec:
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    scaling = params if params.get("rope_type", "default") != "default" else None
    return RopeSpec(theta=float(theta), rotary_dim=rotary_dim, scaling=scaling, interleave=interleave)


def eos_ids(cfg: object) -> tuple[int, ...]:
    eos = getattr(cfg, "eos_token_id", None)
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)


def head_dim_of(cfg: object) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def max_context(cfg: object) -> int:
    """The longest context the checkpoint supports exactly.

    A sliding window shorter than the trained context would need windowed
    attention, which the shared layers do not implement; capping the context
    at the window keeps every output exact.
    """
    limit = cfg.max_position_embeddings
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True):
        limit = min(limit, window)
    return limit


def base_spec(cfg: object, attention: AttentionSpec, moe: MoESpec | None, sparse: list[bool], **extra) -> ModelSpec:
    return ModelSpec(
        architecture=(getattr(cfg, "architectures", None) or [cfg.model_type])[0],
        family=cfg.model_type,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers,
        intermediate_size=cfg.intermediate_size,
        rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=max_context(cfg),
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
        attention=attention,
        rope=extra.pop("rope", None) or rope_of(cfg, head_dim_of(cfg)),
        moe=moe,
        sparse_layers=tuple(sparse),
        eos_token_ids=eos_ids(cfg),
        bos_token_id=getattr(cfg, "bos_token_id", None),
    )


def gqa(cfg: object, **kw) -> AttentionSpec:
    return AttentionSpec(
        num_heads=cfg.num_attention_heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        head_dim=head_dim_of(cfg),
        **kw,
    )


@family("llama")
def parse_llama(cfg: object) -> ModelSpec:
    bias = bool(getattr(cfg, "attention_bias", False))
    return base_spec(cfg, gqa(cfg, qkv_bias=bias, out_bias=bias), None, [False] * cfg.num_hidden_layers)


@family("qwen2")
def parse_qwen2(cfg: object) -> ModelSpec:
    return base_spec(cfg, gqa(cfg, qkv_bias=True), None, [False] * cfg.num_hidden_layers)


MIXTRAL_RENAMES = (
    (r"\.block_sparse_moe\.", ".mlp."),
    (r"\.experts\.(\d+)\.w1\.", r".experts.\1.gate_proj."),
    (r"\.experts\.(\d+)\.w3\.", r".experts.\1.up_proj."),
    (r"\.experts\.(\d+)\.w2\.", r".experts.\1.down_proj."),
)


@family("mixtral", renames=MIXTRAL_RENAMES)
def parse_mixtral(cfg: object) -> ModelSpec:
    moe = MoESpec(
        num_experts=cfg.num_local_experts,
        top_k=cfg.num_experts_per_tok,
        intermediate_size=cfg.intermediate_size,
        norm_topk_prob=True,
    )
    return base_spec(cfg, gqa(cfg), moe, [True] * cfg.num_hidden_layers)


def qwen_sparse_layers(cfg: object) -> list[bool]:
    only_dense = set(getattr(cfg, "mlp_only_layers", None) or [])
    step = getattr(cfg, "decoder_sparse_step", 1) or 1
    return [i not in only_dense and cfg.num_experts > 0 and (i + 1) % step == 0 for i in range(cfg.num_hidden_layers)]


@family("qwen2_moe", renames=((r"\.mlp\.shared_expert\.", ".mlp.shared_experts."),))
def parse_qwen2_moe(cfg: object) -> ModelSpec:
    moe = MoESpec(
        num_experts=cfg.num_experts,
        top_k=cfg.num_experts_per_tok,
        intermediate_size=cfg.moe_intermediate_size,
        norm_topk_prob=bool(cfg.norm_topk_prob),
        shared_intermediate_size=cfg.shared_expert_intermediate_size or 0,
        shared_expert_gate=bool(cfg.shared_expert_intermediate_size),
    )
    return base_spec(cfg, gqa(cfg, qkv_bias=bool(getattr(cfg, "qkv_bias", True))), moe, qwen_sparse_layers(cfg))


@family("qwen3_moe")
def parse_qwen3_moe(cfg: object) -> ModelSpec:
    moe = MoESpec(
        num_experts=cfg.num_experts,
        top_k=cfg.num_experts_per_tok,
        intermediate_size=cfg.moe_intermediate_size,
        norm_topk_prob=bool(cfg.norm_topk_prob),
    )
    bias = bool(getattr(cfg, "attention_bias", False))
    attention = gqa(cfg, qkv_bias=bias, out_bias=bias, qk_norm="per_head")
    return base_spec(cfg, attention, moe, qwen_sparse_layers(cfg))


@family("olmoe")
def parse_olmoe(cfg: object) -> ModelSpec:
    moe = MoESpec(
        num_experts=cfg.num_experts,
        top_k=cfg.num_experts_per_tok,
        intermediate_size=cfg.intermediate_size,
        norm_topk_prob=bool(cfg.norm_topk_prob),
    )
    bias = bool(getattr(cfg, "attention_bias", False))
    attention = gqa(cfg, qkv_bias=bias, out_bias=bias, qk_norm="full", clip_qkv=cfg.clip_qkv)
    return base_spec(cfg, attention, moe, [True] * cfg.num_hidden_layers)


@family("deepseek_v3", renames=((r"\.mlp\.gate\.e_score_correction_bias$", ".mlp.e_score_correction_bias"),))
def parse_deepseek_v3(cfg: object) -> ModelSpec:
    return deepseek_spec(cfg, scoring="sigmoid", n_group=cfg.n_group or 1, group_score="top2_sum")


@family("deepseek_v2")
def parse_deepseek_v2(cfg: object) -> ModelSpec:
    """DeepSeek-V2 and V2-Lite: V3's attention and layout, softmax routing (greedy or group-limited by each
    group's best expert), never renormalised (transformers' DeepseekV2TopkRouter)."""
    if cfg.topk_method not in ("greedy", "group_limited_greedy"):
        raise CheckpointError(f"deepseek_v2: topk_method '{cfg.topk_method}' is not greedy or group_limited_greedy")
    n_group = (cfg.n_group or 1) if cfg.topk_method == "group_limited_greedy" else 1
    return deepseek_spec(cfg, scoring="softmax", n_group=n_group, group_score="max", norm_topk_prob=False)


def deepseek_spec(cfg: object, scoring: str, n_group: int, group_score: str, norm_topk_prob: bool | None = None) -> ModelSpec:
    """DeepSeek's MLA + shared-expert MoE spec; the versions differ in routing only."""
    num_experts = cfg.n_routed_experts
    if n_group > 1 and num_experts % n_group:
        raise CheckpointError(f"{cfg.model_type}: n_routed_experts={num_experts} is not divisible by n_group={n_group}")
    moe = MoESpec(
        num_experts=num_experts,
        top_k=cfg.num_experts_per_tok,
        intermediate_size=cfg.moe_intermediate_size,
        scoring=scoring,
        norm_topk_prob=bool(cfg.norm_topk_prob) if norm_topk_prob is None else norm_topk_prob,
        n_group=n_group,
        topk_group=(cfg.topk_group or 1) if n_group > 1 else 1,
        group_score=group_score,
        routed_scaling_factor=float(cfg.routed_scaling_factor),
        has_correction_bias=scoring == "sigmoid",
        shared_intermediate_size=cfg.moe_intermediate_size * (cfg.n_shared_experts or 0),
    )
    mla = MLASpec(
        q_lora_rank=cfg.q_lora_rank,
        kv_lora_rank=cfg.kv_lora_rank,
        qk_nope_head_dim=cfg.qk_nope_head_dim,
        qk_rope_head_dim=cfg.qk_rope_head_dim,
        v_head_dim=cfg.v_head_dim,
        rope_interleave=bool(getattr(cfg, "rope_interleave", True)),
    )
    bias = bool(getattr(cfg, "attention_bias", False))
    attention = AttentionSpec(
        num_heads=cfg.num_attention_heads,
        num_kv_heads=cfg.num_attention_heads,
        head_dim=cfg.qk_nope_head_dim + cfg.qk_rope_head_dim,
        qkv_bias=bias,
        out_bias=bias,
        mla=mla,
    )
    sparse = [i >= cfg.first_k_dense_replace for i in range(cfg.num_hidden_layers)]
    rope = rope_of(cfg, cfg.qk_rope_head_dim, interleave=mla.rope_interleave)
    return base_spec(cfg, attention, moe, sparse, rope=rope)


def rename(fam: Family, name: str) -> str:
    """A checkpoint tensor name in our module layout (no ``model.`` prefix).

    Attention's q_proj/k_proj/v_proj keep their names here; the loader then
    concatenates them into the module's one ``qkv_proj`` (loader.fuse_qkv).
    """
    name = re.sub(r"^model\.", "", name)
    for pattern, repl in fam.renames:
        name = re.sub(pattern, repl, name)
    return name
