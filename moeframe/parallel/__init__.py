"""Parallel strategies (registry "parallel"): single, tensor, expert, pipeline (torch.distributed)."""

from moeframe.parallel.base import ParallelStrategy
from moeframe.registry import Registry, import_components

PARALLEL: Registry[ParallelStrategy] = Registry("parallel")

__all__ = ["PARALLEL", "ParallelStrategy"]

import_components(__name__, __path__)
