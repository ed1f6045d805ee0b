"""Scheduler policies (registry "scheduler"): the order in which waiting requests are admitted."""

from moeframe.engine.policies.base import SchedulerParams, SchedulingPolicy
from moeframe.registry import Registry, import_components

SCHEDULERS: Registry[SchedulingPolicy] = Registry("scheduler")

__all__ = ["SCHEDULERS", "SchedulerParams", "SchedulingPolicy"]

import_components(__name__, __path__)
