"""Expert kernels (registry "experts"): reference loop, grouped_mm, Triton fused MoE."""

from moeframe.experts.base import ExpertsKernel
from moeframe.registry import Registry, import_components

EXPERTS: Registry[ExpertsKernel] = Registry("experts")

__all__ = ["EXPERTS", "ExpertsKernel"]

import_components(__name__, __path__)
