"""Workloads (registry "workload"): what a run sends to the engine, and the metrics it reports."""

from moeframe.registry import Registry, import_components
from moeframe.workloads.base import Workload

WORKLOADS: Registry[Workload] = Registry("workload")

__all__ = ["WORKLOADS", "Workload"]

import_components(__name__, __path__)
