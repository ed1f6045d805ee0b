"""Run loggers (registry "logger"): jsonl (default), wandb."""

from moeframe.registry import Registry, import_components
from moeframe.telemetry.loggers.base import RunLogger

LOGGERS: Registry[RunLogger] = Registry("logger")

__all__ = ["LOGGERS", "RunLogger"]

import_components(__name__, __path__)
