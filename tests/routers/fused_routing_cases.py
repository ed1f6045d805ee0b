"""Cases the route_hidden and route_residual tests share: routers that take the fused gate top-k launch, and some that never do."""

from __future__ import annotations

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS, Router

DEEPSEEK = MoESpec(num_experts=16, top_k=4, intermediate_size=8, scoring="sigmoid", norm_topk_prob=True,
                   n_group=4, topk_group=2, routed_scaling_factor=2.5, has_correction_bias=True)  # fmt: skip
HIDDEN = 40

# Forcing the fused launch on CPU tensors runs it in Triton's interpreter; with a GPU
# Triton compiles for CUDA instead, and the CUDA tests at the OLMoE shape cover it.
INTERPRETER_ONLY = "forces the fused kernel on CPU tensors, which only the interpreter runs"


def fused_routers(softmax: MoESpec) -> list[tuple[dict, MoESpec]]:
    """Softmax top-k without capacity: native and top_k, renormalised or not."""
    return [({"name": "native"}, softmax), ({"name": "top_k", "k": 2, "renormalize": False}, softmax), ({"name": "top_k", "k": 1}, softmax)]


def unfused_routers(softmax: MoESpec) -> list[tuple[dict, MoESpec]]:
    """Group-limited (DeepSeek) and capacity-limited top-k: never the fused launch."""
    return [
        ({"name": "native"}, DEEPSEEK),
        ({"name": "top_k", "k": 2, "capacity_factor": 1.0}, softmax),
        ({"name": "top_k"}, DEEPSEEK),
    ]


def build(config: dict, moe: MoESpec) -> Router:
    return ROUTERS.build(config, moe=moe, layer_idx=0)
