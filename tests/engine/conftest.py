"""Engine-level cache fixtures: tiny engines, and one cache=none reference run of the small workloads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from engine_runs import PRESET, ROOMY_POOL, CacheRun, run_all_workloads

from moeframe import Engine


@pytest.fixture(scope="session")
def tiny_path(checkpoint_factory: Callable[[str], Path]) -> Path:
    return checkpoint_factory(PRESET)


@pytest.fixture(scope="session")
def make_engine(tiny_path: Path) -> Callable[..., Engine]:
    def make(*overrides: str) -> Engine:
        return Engine.from_overrides([f"model.path={tiny_path}", "device=cpu", "dtype=float32", "workload=few_shot", *overrides])

    return make


@pytest.fixture(scope="session")
def reference(make_engine: Callable[..., Engine]) -> CacheRun:
    """cache=none with a roomy pool: the outputs every other configuration must reproduce."""
    return run_all_workloads(make_engine("cache=none", *ROOMY_POOL))
