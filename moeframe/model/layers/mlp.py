"""The SwiGLU feed-forward block (Shazeer, 2020) of every family's dense layers and shared experts.

Its projections run through small_gemv.project: F.linear, the Triton GEMV at
decode batch sizes on CUDA under ``runner.decode_gemv``, and a
tensor-parallel module's own forward where tp_layers swapped one in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moeframe.model.layers.small_gemv import project


class GatedMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return project(self.down_proj, F.silu(project(self.gate_proj, x)) * project(self.up_proj, x))
