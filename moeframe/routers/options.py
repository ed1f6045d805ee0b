"""Router options resolved against, and checked against, the checkpoint's own routing.

A null option means "as the checkpoint does" (its top_k, its scoring, its
norm_topk_prob), so a router differs from native routing only in what the
config names. An option that cannot apply to the model fails at build, before
any weight is loaded (the structured-config habit of DESIGN.md).
"""

from __future__ import annotations

from moeframe.model.spec import MoESpec

SCORINGS = ("softmax", "sigmoid")


def check_k(k: int | None) -> None:
    if k is not None and k < 1:
        raise ValueError(f"k={k}: a token needs at least one expert (k >= 1)")


def check_scoring(score: str | None) -> None:
    if score is not None and score not in SCORINGS:
        raise ValueError(f"score='{score}': valid choices are {', '.join(SCORINGS)}")


def check_positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name}={value}: must be > 0 (null disables it where that is allowed)")


def resolve_k(k: int | None, moe: MoESpec) -> int:
    """The router's k, defaulting to the checkpoint's top_k; never more than the experts there are."""
    resolved = moe.top_k if k is None else k
    if resolved > moe.num_experts:
        raise ValueError(f"k={resolved} is larger than the model's {moe.num_experts} experts")
    return resolved


def resolve_scoring(score: str | None, moe: MoESpec) -> str:
    """Sigmoid gates only mean something for a checkpoint trained with them.

    A softmax-trained gate is defined only up to a per-token shift of its
    logits, so the sigmoid of those logits is arbitrary; softmax over a
    sigmoid-trained gate (DeepSeek-V3) is still a distribution over experts.
    """
    resolved = moe.scoring if score is None else score
    if resolved == "sigmoid" and moe.scoring != "sigmoid":
        raise ValueError("score='sigmoid' does not apply to this model: its gate was trained with softmax")
    return resolved


def resolve_renormalize(renormalize: bool | None, moe: MoESpec) -> bool:
    return moe.norm_topk_prob if renormalize is None else renormalize
