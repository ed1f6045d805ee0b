"""Rotary position embeddings (Su et al., 2021) evaluated at arbitrary positions.

Inverse frequencies come from transformers' RoPE parameter functions for
scaled variants (yarn, llama3, ...), so every scaling a checkpoint names is
computed as its reference does; plain RoPE is computed here.
"""

from __future__ import annotations

import torch

from moeframe.model.layers.fusion import fused_on_cuda
from moeframe.model.spec import RopeSpec


def rope_inv_freq(rope: RopeSpec, hf_config: object | None) -> tuple[torch.Tensor, float]:
    scaling = rope.scaling or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default" or hf_config is None:
        exponent = torch.arange(0, rope.rotary_dim, 2, dtype=torch.float, device="cpu") / rope.rotary_dim
        return 1.0 / (rope.theta**exponent), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, device=torch.device("cpu"))
    return inv_freq.float(), float(attention_scaling)


class Rotary:
    """Holds no weights: the inverse frequencies are derived from the spec, once per device."""

    def __init__(self, rope: RopeSpec, hf_config: object | None = None) -> None:
        self._inv_freq, self.attention_scaling = rope_inv_freq(rope, hf_config)
        self.interleave = rope.interleave
        self._last: tuple[torch.Tensor, torch.dtype, tuple[torch.Tensor, torch.Tensor]] | None = None

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, rotary_dim/2] cos and sin of each position's angles.

        Every layer of a forward passes the same positions tensor: the angles
        are computed by the first layer and reused by the rest (one set of
        kernels per step instead of one per layer).
        """
        if self._last is not None and self._last[0] is positions and self._last[1] == dtype:
            return self._last[2]
        self._last = (positions, dtype, self._compute(positions, dtype))
        return self._last[2]

    def _compute(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self._inv_freq.device != positions.device:
            self._inv_freq = self._inv_freq.to(positions.device)
        return angles_cos_sin(positions, self._inv_freq, self.attention_scaling, dtype)

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return rotate(x, cos, sin, self.interleave)


@fused_on_cuda
def angles_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, scaling: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = positions[:, None].float() * inv_freq[None, :]
    return (freqs.cos() * scaling).to(dtype), (freqs.sin() * scaling).to(dtype)


@fused_on_cuda
def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """x [N, heads, rotary_dim]; rotates pairs (i, i + d/2), or (2i, 2i+1) when interleaved.

    The interleaved form writes its output de-interleaved (evens' results,
    then odds'), as transformers' DeepSeek-V3 does: the same permutation on
    q and k leaves their dot products unchanged.
    """
    cos, sin = cos[:, None, :], sin[:, None, :]
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
