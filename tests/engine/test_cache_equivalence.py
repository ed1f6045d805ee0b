"""Greedy outputs do not depend on the KV cache: radix and paged reproduce cache=none on every workload.

Each configuration runs all four workloads once (module-scoped); the tests
below read that run. The tight pool forces evictions and recompute
preemptions, which must not change a single token either.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from engine_runs import ROOMY_POOL, TIGHT_POOL, WORKLOADS_SMALL, CacheRun, run_all_workloads

from moeframe import Engine

CACHES = {
    "radix-page1": ["cache=radix", "cache.page_size=1"],
    "radix-page4": ["cache=radix", "cache.page_size=4"],
    "paged-block4-reuse": ["cache=paged", "cache.block_size=4", "cache.prefix_reuse=true"],
    "paged-block4-noreuse": ["cache=paged", "cache.block_size=4", "cache.prefix_reuse=false"],
    "paged-block16-reuse": ["cache=paged", "cache.block_size=16", "cache.prefix_reuse=true"],
    "paged-block16-noreuse": ["cache=paged", "cache.block_size=16", "cache.prefix_reuse=false"],
}
REUSING = [name for name in CACHES if not name.endswith("noreuse")]
WITH_NONE = {**CACHES, "none": ["cache=none"]}


@pytest.fixture(scope="module")
def cache_run(make_engine: Callable[..., Engine]) -> Callable[[str, str], CacheRun]:
    """(cache name, "roomy" | "tight") -> its run of all workloads, made once per module."""
    runs: dict[tuple[str, str], CacheRun] = {}

    def get(name: str, pool: str) -> CacheRun:
        if (name, pool) not in runs:
            overrides = WITH_NONE[name] + (ROOMY_POOL if pool == "roomy" else TIGHT_POOL)
            runs[name, pool] = run_all_workloads(make_engine(*overrides))
        return runs[name, pool]

    return get


@pytest.mark.parametrize("workload", list(WORKLOADS_SMALL))
@pytest.mark.parametrize("name", list(CACHES))
def test_greedy_outputs_match_no_cache(cache_run, reference, name, workload):
    run = cache_run(name, "roomy")
    assert run.workloads[workload].outputs == reference.workloads[workload].outputs


@pytest.mark.parametrize("workload", list(WORKLOADS_SMALL))
@pytest.mark.parametrize("name", list(WITH_NONE))
def test_greedy_outputs_match_no_cache_under_pool_pressure(cache_run, reference, name, workload):
    run = cache_run(name, "tight")
    assert run.workloads[workload].outputs == reference.workloads[workload].outputs


@pytest.mark.parametrize("name", list(WITH_NONE))
def test_tight_pool_preempts(cache_run, name):
    assert cache_run(name, "tight").preemptions > 0


@pytest.mark.parametrize("name", REUSING)
def test_tight_pool_evicts(cache_run, name):
    assert cache_run(name, "tight").evicted_tokens > 0


@pytest.mark.parametrize("name", REUSING)
def test_prefix_caches_serve_cached_tokens(cache_run, name):
    run = cache_run(name, "roomy")
    assert sum(o.cached_tokens for w in run.workloads.values() for o in w.run.outputs) > 0


@pytest.mark.parametrize("pool", ["roomy", "tight"])
@pytest.mark.parametrize("name", list(WITH_NONE))
def test_no_slot_leak_after_each_workload(cache_run, name, pool):
    run = cache_run(name, pool)
    for record in run.workloads.values():
        assert record.free_slots == record.expected_free_slots


@pytest.mark.parametrize("pool", ["roomy", "tight"])
@pytest.mark.parametrize("name", list(WITH_NONE))
def test_clear_frees_every_slot(cache_run, name, pool):
    run = cache_run(name, pool)
    assert run.free_slots_after_clear == run.engine.built.pool.num_slots


def test_every_request_completes_in_full(reference):
    for record in reference.workloads.values():
        assert all(r.finish_reason == "length" and len(r.output_ids) == r.params.max_new_tokens for r in record.run.requests)
