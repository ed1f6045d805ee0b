"""Small workloads and the record of running them all on one engine, for the engine-level cache tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moeframe import Engine
from moeframe.workloads import WORKLOADS
from moeframe.workloads.driver import ClientRun

PRESET = "tiny-mixtral"
# Small enough that every cache configuration runs all four in a second or two.
WORKLOADS_SMALL: dict[str, dict[str, Any]] = {
    "few_shot": dict(prefix_tokens=32, num_questions=5, question_tokens=5, max_new_tokens=5, max_concurrency=3),
    "multi_turn": dict(num_conversations=3, num_turns=3, system_tokens=12, user_tokens=6, max_new_tokens=5),
    "tree": dict(depth=2, branching=2, root_tokens=16, branch_tokens=5, max_new_tokens=4),
    "random": dict(num_requests=4, min_prompt_tokens=8, max_prompt_tokens=24, max_new_tokens=5),
}

ROOMY_POOL = ["cache.max_tokens=2048"]
# Every workload's longest request fits alone (about 45 tokens); several together do not.
TIGHT_POOL = ["cache.max_tokens=64", "scheduler.chunk_size=16", "scheduler.max_batch_tokens=32"]


@dataclass
class WorkloadRecord:
    run: ClientRun
    outputs: dict[Any, list[int]]  # submission tag -> generated ids
    free_slots: int
    expected_free_slots: int  # num_slots - cache.num_cached_tokens() right after the workload


@dataclass
class CacheRun:
    engine: Engine
    workloads: dict[str, WorkloadRecord] = field(default_factory=dict)
    free_slots_after_clear: int = -1

    @property
    def evicted_tokens(self) -> int:
        return sum(w.run.evicted_tokens for w in self.workloads.values())

    @property
    def preemptions(self) -> int:
        return sum(w.run.preemptions for w in self.workloads.values())


def run_workload(engine: Engine, name: str) -> ClientRun:
    return WORKLOADS.build({"name": name, "progress": False, **WORKLOADS_SMALL[name]}).client_run(engine)


def run_all_workloads(engine: Engine) -> CacheRun:
    """Every small workload in turn on one engine, the pool's books read after each; then clear()."""
    result = CacheRun(engine)
    pool, cache = engine.built.pool, engine.built.cache
    for name in WORKLOADS_SMALL:
        run = run_workload(engine, name)
        outputs = {sub.tag: req.output_ids for sub, req in zip(run.submissions, run.requests)}
        result.workloads[name] = WorkloadRecord(run, outputs, pool.num_free_slots, pool.num_slots - cache.num_cached_tokens())
    cache.clear()
    result.free_slots_after_clear = pool.num_free_slots
    return result
