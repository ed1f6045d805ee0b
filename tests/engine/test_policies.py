"""Scheduling order changes when requests run, never what they generate: lpm and fcfs agree token for token."""

from __future__ import annotations

import pytest
from engine_runs import TIGHT_POOL, run_workload


@pytest.mark.parametrize("workload", ["few_shot", "multi_turn"])
def test_lpm_and_fcfs_generate_the_same(make_engine, workload):
    outputs = {}
    for policy in ("fcfs", "lpm"):
        engine = make_engine("cache=radix", f"scheduler={policy}", *TIGHT_POOL)
        run = run_workload(engine, workload)
        assert all(r.finish_reason == "length" for r in run.requests)
        outputs[policy] = {sub.tag: req.output_ids for sub, req in zip(run.submissions, run.requests)}
    assert outputs["fcfs"] == outputs["lpm"]
