"""The component families a config chooses from, by config group."""

from __future__ import annotations

from moeframe.registry import Registry


def GROUP_REGISTRIES() -> dict[str, Registry]:
    """Config group -> registry; imported lazily so that importing moeframe stays cheap."""
    from moeframe.cache import CACHES
    from moeframe.constrain import CONSTRAINTS
    from moeframe.engine.policies import SCHEDULERS
    from moeframe.experts import EXPERTS
    from moeframe.parallel import PARALLEL
    from moeframe.routers import ROUTERS
    from moeframe.telemetry.loggers import LOGGERS
    from moeframe.workloads import WORKLOADS

    return {
        "router": ROUTERS,
        "cache": CACHES,
        "experts": EXPERTS,
        "parallel": PARALLEL,
        "constraint": CONSTRAINTS,
        "scheduler": SCHEDULERS,
        "workload": WORKLOADS,
        "logger": LOGGERS,
    }
