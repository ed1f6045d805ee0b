"""What every layer of one forward step shares: the batch layout, the KV pool and the kernels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeframe.attention import AttendFn
from moeframe.attention.batch import ForwardBatch


@dataclass
class ForwardContext:
    batch: ForwardBatch
    k_cache: list[torch.Tensor]  # per layer [S, Hkv, Dk]
    v_cache: list[torch.Tensor]  # per layer [S, Hkv, Dv]
    attend: AttendFn
