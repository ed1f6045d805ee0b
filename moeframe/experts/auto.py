"""``experts=auto`` (the default): the fastest kernel that runs correctly on the run's device.

- CUDA: the fused Triton MoE (``experts=triton``, its yaml's options), the
  kernel benchmarks/kernels_h100.md measures fastest at every batch size.
- CPU: the per-expert reference loop (``experts=reference``). Triton would
  only run interpreted there. ``experts=grouped_mm`` is 1.08-1.59x faster on
  the CPU at the tiny shapes (experiments/expert_kernels), but its sums depend
  on how rows are grouped: under ``parallel=expert`` it moved float32 logits
  by up to 1.7e-6 against ``parallel=single`` (tests/parallel), where the loop
  gives the same numbers, so the CPU default stays the oracle.

Engine stats name the kernel that runs (``experts_kernel``).
"""

from __future__ import annotations

import torch

from moeframe.experts import EXPERTS
from moeframe.experts.base import ExpertsKernel
from moeframe.experts.reference import ReferenceExperts
from moeframe.experts.triton_moe import TritonFusedMoE, TritonMoEParams
from moeframe.registry import NoParams


@EXPERTS.register("auto")
def auto_experts(params: NoParams, device: torch.device | None = None, **_: object) -> ExpertsKernel:
    if device is not None and device.type == "cuda":
        return TritonFusedMoE(TritonMoEParams(), device=device)
    return ReferenceExperts(params)


def kernel_name(kernel: ExpertsKernel) -> str:
    """The registered name of the kernel that runs (auto's choice resolved)."""
    for name in EXPERTS.names():
        if EXPERTS.entry(name).builder is type(kernel):
            return name
    return type(kernel).__name__
